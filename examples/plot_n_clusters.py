"""
Estimating the number of clusters
=================================

With ``n_clusters="auto"`` the estimator counts the dense groups of the data before it trains:
HDBSCAN, run on a layout of the rows' nearest-neighbour graph, with a minimum cluster size of
0.5% of the rows; groups smaller than half their equal share do not count. The fit then runs
with that number, ``n_clusters_``. ``n_clusters_curve_`` holds the count at other minimum
sizes, and ``plot_cluster_count`` draws it: a flat curve is a firm estimate.

Here: 1,500 rows around 12 centres in 16 dimensions, where the estimate is the number of
centres, and iris, whose two overlapping species form one dense group.
"""

import matplotlib.pyplot as plt
from sklearn.datasets import load_iris, make_blobs
from sklearn.preprocessing import StandardScaler

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy
from sklearn_selflabel.plotting import plot_cluster_count

X, y = make_blobs(n_samples=1500, centers=12, n_features=16, random_state=0)
blobs = SelfLabelingClusterer(n_clusters="auto", random_state=0).fit(X)
print(f"blobs: {blobs.n_clusters_} clusters, accuracy {clustering_accuracy(y, blobs.labels_):.3f}")

X_iris, y_iris = load_iris(return_X_y=True)
X_iris = StandardScaler().fit_transform(X_iris)
iris = SelfLabelingClusterer(n_clusters="auto", random_state=0).fit(X_iris)
print(f"iris: {iris.n_clusters_} clusters for 3 species")

fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
plot_cluster_count(blobs, ax=axes[0]).set_title("12 blobs")
plot_cluster_count(iris, ax=axes[1]).set_title("iris")
plt.show()

# %%
# The count is of dense groups, not of classes: where classes overlap, as two of iris's species
# do, the estimate is lower, and a number given from what the clusters are for
# (``n_clusters=3``) is the better choice. ``benchmarks/n_clusters.py`` measures the estimate
# on more data sets, next to HDBSCAN of the input rows.
