"""
Clustering in a Pipeline with scaling and PCA
=============================================

``SelfLabelingClusterer`` is a scikit-learn estimator, so it can be the last step of a
``Pipeline``: here the digits are standardised, reduced to 16 principal components, and then
clustered. The pipeline's ``predict`` runs new rows through the same steps, and its
``transform`` gives the learned embedding of the PCA features. KMeans on the same features is
the baseline. Labels are used only to score.
"""

from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

X, y = load_digits(return_X_y=True)
X_train, X_new, y_train, y_new = train_test_split(X, y, test_size=0.25, random_state=0)

pipelines = {
    "self-labelling": make_pipeline(
        StandardScaler(),
        PCA(n_components=16, random_state=0),
        SelfLabelingClusterer(n_clusters=10, random_state=0),
    ),
    "KMeans": make_pipeline(
        StandardScaler(),
        PCA(n_components=16, random_state=0),
        KMeans(n_clusters=10, n_init=10, random_state=0),
    ),
}
print(f"{'':16} {'ACC train':>10} {'ACC new':>8} {'NMI new':>8}")
for name, pipeline in pipelines.items():
    train_labels = pipeline.fit_predict(X_train)
    new_labels = pipeline.predict(X_new)  # scaled, projected and clustered like X_train
    print(
        f"{name:16} {clustering_accuracy(y_train, train_labels):10.3f} "
        f"{clustering_accuracy(y_new, new_labels):8.3f} "
        f"{normalized_mutual_info_score(y_new, new_labels):8.3f}"
    )

# %%
# The last step's embedding of the new rows, after scaling and PCA:
print(pipelines["self-labelling"].transform(X_new).shape)
