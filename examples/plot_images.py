"""
Clustering images, with a montage of each cluster
=================================================

Rows that are flattened images can be clustered with the image-aware network: pass
``image_shape`` and the encoder becomes a small convolutional network, trained on randomly
shifted, rotated and scaled views of the images, so that the clusters do not depend on such
small changes. This example uses USPS handwritten digits (16 x 16 pixels) when the project's
shared data are present (``../shared/data/usps.npz`` beside the repository), else
scikit-learn's 8 x 8 digits, with the defaults, on a subset of 5000 images to keep it
quick (the full USPS set clusters at ACC 0.986, ``benchmarks/quality.py``).

The montage shows, for every cluster, the images the model is surest of. The digit classes
are used only to score.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import sklearn_selflabel
from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

# The shared data lie beside the repository of a source checkout (an editable install).
REPOSITORY = Path(sklearn_selflabel.__file__).resolve().parents[1]
USPS = REPOSITORY.parent / "shared" / "data" / "usps.npz"

if USPS.is_file():
    with np.load(USPS) as data:
        images, y = data["X"], data["y"]  # float32 (9298, 16, 16) in [0, 1]
    name = "USPS"
else:
    digits = load_digits()
    images, y = digits.images / 16.0, digits.target  # (1797, 8, 8)
    name = "scikit-learn digits"
subset = np.random.default_rng(0).permutation(len(images))[:5000]
images, y = images[subset], y[subset]
height, width = images.shape[1:]
X = images.reshape(len(images), height * width)  # rows are images flattened in (H, W) order

model = SelfLabelingClusterer(n_clusters=10, image_shape=(height, width), random_state=0)
labels = model.fit_predict(X)
print(f"{name}: {X.shape[0]} images of {height} x {width}")
print(f"accuracy {clustering_accuracy(y, labels):.3f}, cluster sizes {np.bincount(labels)}")

# %%
# Each row is a cluster; its images are those with the highest probability of it under the
# model, most confident first.
n_shown = 12
proba = model.predict_proba(X)
montage = np.zeros((10 * (height + 1), n_shown * (width + 1)))  # blank (white) between images
for cluster in range(10):
    members = np.flatnonzero(labels == cluster)
    surest = members[np.argsort(-proba[members, cluster])][:n_shown]
    for column, index in enumerate(surest):
        top, left = cluster * (height + 1), column * (width + 1)
        montage[top : top + height, left : left + width] = images[index]

fig, ax = plt.subplots(figsize=(n_shown * 0.6, 10 * 0.6), layout="constrained")
ax.imshow(montage, cmap="gray_r", interpolation="nearest")
ax.set_yticks((np.arange(10) + 0.5) * (height + 1), [f"cluster {k}" for k in range(10)])
ax.set_xticks([])
ax.set_title(f"{name}: the surest images of each cluster")
plt.show()
