"""Hub model cards: the jinja templates shipped beside this module and the one way every card is rendered.

A card is a `huggingface_hub.ModelCard`: its YAML front matter comes from a `ModelCardData` (the template
starts with ``{{ card_data }}`` between ``---`` lines) and its text from the template's placeholders. The
pretrained card's values are built in `astropt_hf.training.card`, the converted one's in
`astropt_hf.conversion.model_card`, the fine-tuned one's in `astropt_hf.model_cards.finetuned`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

# Tags every astroPT card carries; each kind of card adds its own.
BASE_TAGS = ("astronomy", "galaxies", "astropt")

__all__ = ["BASE_TAGS", "build_card", "card_data", "read_template"]


def read_template(name: str) -> str:
    """The text of the shipped template `name` ("pretrained", "converted" or "finetuned")."""
    return resources.files(__name__).joinpath(f"{name}.md").read_text(encoding="utf-8")


def card_data(pipeline_tag: str, tags: Iterable[str] = (), **fields: Any) -> ModelCardData:
    """Front matter of an astroPT card: Transformers library, the base tags plus `tags`, and any other
    `ModelCardData` field (license, datasets, metrics, base_model, ...)."""
    return ModelCardData(library_name="transformers", pipeline_tag=pipeline_tag, tags=[*BASE_TAGS, *tags], **fields)


def build_card(template: str, data: ModelCardData, values: Mapping[str, Any]) -> ModelCard:
    """Render a jinja `template` with `values` and `data` as its front matter.

    A placeholder without a value is an error rather than an empty string: it means the template and
    the code that fills it have drifted apart.
    """
    import jinja2
    from jinja2 import meta

    placeholders = meta.find_undeclared_variables(jinja2.Environment().parse(template))
    missing = sorted(placeholders - set(values) - set(data.to_dict()) - {"card_data"})
    if missing:
        raise KeyError(f"model card template needs values for {missing}")
    card = ModelCard.from_template(data, template_str=template, **values)
    if not card.text.endswith("\n"):  # jinja drops the template's final newline
        card.text += "\n"
    return card
