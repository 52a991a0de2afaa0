"""A tiny random-weight Qwen2-VL saved to a local folder: what demo runs and tests train when no weights can be
downloaded. It goes through the same loading code as the real model (a local path instead of a hub id), so the
pipeline it exercises is the real one; its answers mean nothing.

Deterministic: the same tokenizer corpus, config and seed give the same files on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from geocurate.export_format import PROMPT

DEMO_SEED = 0
BUILD_MARKER = "geocurate_demo_model.json"
DEMO_VERSION = 1  # bump when the recipe below changes, so stale demo folders are rebuilt

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (as shipped with the real model's processor).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_COUNTRIES = [
    "Poland", "Germany", "France", "Brazil", "Japan", "Kenya", "Canada", "Australia", "Russia", "Mexico", "India",
    "South Africa", "United States", "United Kingdom", "Spain", "Italy",
]
_CORPUS_CITIES = ["Krakow", "Berlin", "Paris", "Sao Paulo", "Tokyo", "Nairobi", "Toronto", "Sydney", "Moscow"]
_CORPUS_REASONS = [
    "yellow road markings and black and white bollards", "Cyrillic script on the shop signs",
    "driving on the left with white dashed lines", "red soil and eucalyptus trees", "snow poles by the road",
]


def tokenizer_corpus() -> list[str]:
    """A few hundred lines shaped like the prompts and answers the model will see."""
    lines = [PROMPT, "You are a helpful assistant.", "system user assistant"]
    for i, country in enumerate(_CORPUS_COUNTRIES):
        city = _CORPUS_CITIES[i % len(_CORPUS_CITIES)]
        reason = _CORPUS_REASONS[i % len(_CORPUS_REASONS)]
        lines.append(json.dumps({"country": country, "city": city, "reasons": reason}))
        lines.append(json.dumps({"country": country, "city": None, "reasons": reason}))
    return lines * 4


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=QWEN2_VL_CHAT_TEMPLATE, padding_side="left",
    )


def build_processor(tokenizer):
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # 56x56..112x112 pixels: 4 to 16 image tokens after the 2x2 merge, so a step costs milliseconds on a CPU.
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    return Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_model(tokenizer):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
            # Wide initial weights: with std 0.02, a 64-wide model's frozen lm_head caps logits near ±1.3 and LoRA
            # could never make an answer likely; std 0.2 lets a few LoRA steps over-fit, as a real base model can.
            initializer_range=0.2,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(DEMO_SEED)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval()


def is_built(directory: Path) -> bool:
    marker = Path(directory) / BUILD_MARKER
    try:
        return json.loads(marker.read_text()).get("version") == DEMO_VERSION
    except (OSError, ValueError):
        return False


def build_demo_model(directory: Path) -> Path:
    """Write tokenizer, processor and model to `directory` (a no-op when an up-to-date build is there)."""
    directory = Path(directory)
    if is_built(directory):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer)
    processor.save_pretrained(directory)
    model.save_pretrained(directory)
    # Written last: a build interrupted half-way is rebuilt next time.
    (directory / BUILD_MARKER).write_text(json.dumps({"version": DEMO_VERSION, "seed": DEMO_SEED}))
    return directory


def demo_model_dir(settings) -> Path:
    return Path(settings.data_dir) / "models" / f"tiny-qwen2-vl-v{DEMO_VERSION}"
