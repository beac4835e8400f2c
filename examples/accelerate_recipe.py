"""
Data-parallel training with Hugging Face accelerate
===================================================

Trains ``SelfLabelingClusterer`` in online label mode through skorch's ``AccelerateMixin``.
Every process runs this same script on the same data (here generated from a fixed seed; for
data on disk, memory-map the same file in every process). The loader hands each process its
own share of the batches, ``DistributedDataParallel`` averages the gradients, and the online
label step sums its cluster masses over processes with ``torch.distributed.all_reduce``, so
the equipartition holds over the global batch and all processes' queues.

    python examples/accelerate_recipe.py                                        # 1 process
    accelerate launch --cpu --num_processes 2 examples/accelerate_recipe.py     # 2 on CPUs
    accelerate launch --multi_gpu --num_processes 4 examples/accelerate_recipe.py

For several nodes, run ``accelerate config`` on each (or pass ``--num_machines``,
``--machine_rank`` and ``--main_process_ip``) and launch the same command everywhere.
"""

import numpy as np
from accelerate import Accelerator
from sklearn.datasets import make_blobs

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy


def main() -> None:
    # The estimator places the network and the batches on accelerator.device itself.
    accelerator = Accelerator(device_placement=False)
    X, y = make_blobs(n_samples=20_000, n_features=32, centers=20, random_state=0)
    model = SelfLabelingClusterer(
        n_clusters=20,
        label_mode="online",
        accelerator=accelerator,
        random_state=0,  # the same seed everywhere: the same initial weights and batch order
    )
    model.fit(X.astype(np.float32))
    if accelerator.is_main_process:
        acc = clustering_accuracy(y, model.labels_)
        print(f"{accelerator.num_processes} process(es) on {accelerator.device}: ACC {acc:.3f}")
        # The fitted model no longer needs the accelerator; drop it before saving.
        model.set_params(accelerator=None)


if __name__ == "__main__":
    main()
