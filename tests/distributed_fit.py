"""A data-parallel fit in two (or more) CPU processes: run by ``test_scale.py`` under torchrun.

    ACCELERATE_USE_CPU=true python -m torch.distributed.run --nproc_per_node 2 \
        tests/distributed_fit.py OUT_DIR

Each process fits the same blobs through one ``accelerate.Accelerator`` (gloo backend) in both
label modes, with the estimator's defaults for the sizes (estimated, in offline mode), and
writes what it got to ``OUT_DIR/rank<i>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True, device_placement=False)
    X, y = make_blobs(n_samples=400, centers=4, n_features=6, cluster_std=0.5, random_state=0)
    X = X.astype(np.float32)
    result = {"n_processes": accelerator.num_processes}
    for label_mode in ("offline", "online"):
        model = SelfLabelingClusterer(
            n_clusters=4,
            n_heads=2,
            hidden_layer_sizes=(32,),
            embedding_dim=8,
            max_epochs=8,
            n_label_steps=6,
            batch_size=32,
            queue_size=128,
            label_mode=label_mode,
            propagation=False,
            accelerator=accelerator,
            random_state=0,
        ).fit(X)
        weights = sum(p.detach().double().sum() for p in model.net_.module_.parameters())
        result[label_mode] = {
            "labels": model.labels_.tolist(),
            "accuracy": clustering_accuracy(y, model.labels_),
            "weights": float(weights),
        }
    path = out_dir / f"rank{accelerator.process_index}.json"
    path.write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
