"""A tune run directory as ``raymeta tune`` writes it (``report.json`` + ``best_model.pt`` with
its checksum), for the tests of ``predict`` / ``load_model`` and their bad inputs. Imported as
``from _tune_run import write_tune_run`` (tests/ is on sys.path, as for ``_kill_writer``)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from raymeta.core.models import ModelSpec, build_model


def write_tune_run(
    root: Path,
    spec: ModelSpec,
    kind: str = "regression",
    weights: Any = None,
    **report: Any,
) -> Path:
    """Write ``root``: ``weights`` (default: ``spec``'s model at seed 0) saved by ``torch.save``
    and a report naming ``spec``, the weights' sha256, candidate ``mlp`` and ``kind``; extra
    ``report`` keys are added (or replace those)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if weights is None:
        weights = {k: v.detach().clone() for k, v in build_model(spec).named_parameters()}
    buf = io.BytesIO()
    torch.save(weights, buf)
    data = buf.getvalue()
    (root / "best_model.pt").write_bytes(data)
    rep = {
        "model": spec.to_dict(),
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "candidate": "mlp",
        "kind": kind,
        **report,
    }
    (root / "report.json").write_text(json.dumps(rep))
    return root
