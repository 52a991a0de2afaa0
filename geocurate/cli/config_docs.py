"""The README's configuration reference, generated from the settings class (a test keeps the README in sync)."""

from __future__ import annotations

from pathlib import Path

from geocurate.settings import ENV_PREFIX, Settings

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def _default(value: object) -> str:
    if value is None:
        return "(unset)"
    return f"`{value}`"


def settings_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | {_default(field.default)} | {description} |")
    return "\n".join(lines)


def readme_block() -> str:
    return f"{BEGIN}\n{settings_table()}\n{END}"


def write_readme(readme: Path) -> None:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + readme_block() + text[end:])


if __name__ == "__main__":
    import sys

    if "--write" in sys.argv:
        write_readme(Path(__file__).resolve().parents[2] / "README.md")
    else:
        print(settings_table())
