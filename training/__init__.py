"""Two-stage LoRA fine-tuning of a vision-language model on curated exports, inference and geo evaluation."""
