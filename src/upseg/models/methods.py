"""Head kinds and method names: `backbone[+head[@input][:init]]`, the one spelling of a model's
architecture and start that runs, sweeps, benches and plans share.

`elunet` is a baseline, `elunet+plain` and `elunet+skip` carry a head with the default start,
`elunet+plain:pytorch` PyTorch's initialisation (as in the paper), `elunet+plain@features`
a head that reads the backbone's features instead of its logits. The part before ':' names
the architecture (what cost and latency depend on), the suffix only the initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

from upseg.models.features import (
    DEFAULT_HEAD_INPUT,
    FEATURE_HEADS,
    HEAD_INPUTS,
    check_head_input,
)
from upseg.models.head import DEFAULT_HEAD_INIT, HEAD_INITS, resolve_head_init
from upseg.models.registry import get_backbone_spec

HEADS: tuple[str, ...] = ("plain", "skip", "guided")  # the up-scaling heads
BASELINE = "none"  # no head: how configs, flags and method names name the baseline
HEAD_CHOICES: tuple[str, ...] = (*HEADS, BASELINE)  # what a configuration may name


def method_name(
    backbone: str,
    head: str | None,
    init: str = DEFAULT_HEAD_INIT,
    head_input: str = DEFAULT_HEAD_INPUT,
) -> str:
    """'elunet' for a baseline; 'elunet+plain', 'elunet+plain:pytorch' for a head whose
    initialisation is not the default, 'elunet+plain@features' (or
    'elunet+plain@features:bilinear') for a head that reads the backbone's features."""
    if head in (None, BASELINE):
        return backbone
    init = resolve_head_init(init)
    source = "" if check_head_input(head_input) == DEFAULT_HEAD_INPUT else f"@{head_input}"
    return f"{backbone}+{head}{source}" + (f":{init}" if init != DEFAULT_HEAD_INIT else "")


@dataclass(frozen=True)
class Method:
    backbone: str
    head: str = BASELINE
    init: str = DEFAULT_HEAD_INIT
    input: str = DEFAULT_HEAD_INPUT  # what the head reads: logits | features

    @property
    def name(self) -> str:
        return method_name(self.backbone, self.head, self.init, self.input)


def parse_method(text: str) -> Method:
    """`backbone[+head[@input][:init]]`; the inverse of Method.name."""
    backbone, _, rest = text.partition("+")
    rest, _, init = rest.partition(":")
    head, at, source = rest.partition("@")
    get_backbone_spec(backbone)  # raises with the list of names
    head = head or BASELINE
    known = ("", *HEAD_INITS, "default") if head != BASELINE else ("",)  # default: former name
    inputs = HEAD_INPUTS if head in FEATURE_HEADS else ()
    if head not in HEAD_CHOICES or init not in known or (at and source not in inputs):
        raise ValueError(
            f"method {text!r} is not backbone[+plain[@features]|+guided[@features]|+skip]"
            "[:bilinear|:pytorch], e.g. elunet+plain:pytorch or elunet+guided@features"
        )
    return Method(
        backbone, head, resolve_head_init(init or DEFAULT_HEAD_INIT), source or DEFAULT_HEAD_INPUT
    )


def baseline_of(method: str) -> str:
    """The same-size baseline of a method name: its backbone without a head."""
    return method.split("+", 1)[0]
