"""
The learned embedding in two dimensions
=======================================

``transform`` returns the embedding ``Φ(X)`` that the network learns while it clusters. This
example clusters the digits, projects their 64-dimensional embedding to the plane with t-SNE,
and colours each point by its cluster and then by its true digit. The training curves show how
the labels settle: each label step changes fewer of them, and the equipartition constraint
keeps every cluster near an equal share ``N / K``.
"""

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy
from sklearn_selflabel.plotting import plot_embedding, plot_training_curves

X, y = load_digits(return_X_y=True)
model = SelfLabelingClusterer(n_clusters=10, random_state=0)
model.fit(X)
print(f"embedding {model.transform(X).shape}")
print(f"accuracy {clustering_accuracy(y, model.labels_):.3f}")

# %%
# A sample of 800 digits, embedded by the network and projected by t-SNE: coloured by the
# cluster the model gives them (left) and by the digit they show (right).
sample = X[:800], y[:800]
fig, axes = plt.subplots(1, 2, figsize=(11, 5), layout="constrained")
plot_embedding(model, sample[0], ax=axes[0], method="tsne", random_state=0)
axes[0].set_title("clusters")
plot_embedding(model, sample[0], labels=sample[1], ax=axes[1], method="tsne", random_state=0)
axes[1].set_title("true digits")

# %%
# Training: the loss, the fraction of labels each label step changed, and the smallest and
# largest cluster over all heads.
plot_training_curves(model)
plt.show()
