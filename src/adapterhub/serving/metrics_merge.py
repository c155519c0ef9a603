"""Several servers' Prometheus texts as one exposition, each sample labelled with the server it came from.

``merge_expositions({"r1": text1, "r2": text2}, label="replica")`` parses each text (exposition format 0.0.4, as
``metrics.render`` writes it): a family starts at its ``# HELP`` / ``# TYPE`` lines and owns the samples that
follow (a histogram's ``_bucket`` / ``_sum`` / ``_count`` included). The result lists each family once, in the
order the families first appear, with its ``# HELP`` / ``# TYPE`` lines (from the first text that has them) and
then every text's samples of that family, ``label="KEY"`` added as the first label of each sample. This is the
Prometheus convention for several instances of one job (as the ``instance`` label): counters and histograms keep
their per-instance values and resets, and ``sum by (...)`` aggregates across them. Texts are taken in sorted key
order, so the output is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

from adapterhub.serving.metrics import label_value


def _with_label(sample: str, label: str, value: str) -> str:
    """``name{a="b"} v`` -> ``name{label="value",a="b"} v``; ``name v`` -> ``name{label="value"} v``."""
    pair = f'{label}="{label_value(value)}"'
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1 :]
        return f"{sample[: brace + 1]}{pair}{'' if rest.startswith('}') else ','}{rest}"
    return f"{sample[:space]}{{{pair}}}{sample[space:]}"


def merge_expositions(texts: Mapping[str, str], *, label: str = "replica") -> str:
    """One exposition of every text in ``texts`` (key -> Prometheus text), see the module docstring."""
    order: list[str] = []
    comments: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for key in sorted(texts):
        family = ""
        for line in texts[key].splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(maxsplit=3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    if family not in comments:
                        order.append(family)
                        comments[family], samples[family] = [], []
                    if line not in comments[family] and len(comments[family]) < 2:
                        comments[family].append(line)
                continue
            if family not in samples:  # a sample before any HELP/TYPE: its own untyped family
                family = line.split("{", 1)[0].split(" ", 1)[0]
                if family not in samples:
                    order.append(family)
                    comments[family], samples[family] = [], []
            samples[family].append(_with_label(line, label, key))
    out = []
    for family in order:
        out.extend(comments[family])
        out.extend(samples[family])
    return "\n".join(out) + ("\n" if out else "")
