"""
Choosing parameters with GridSearchCV
=====================================

Without labels, ``GridSearchCV`` ranks parameter settings by the estimator's ``score``: the
normalised mutual information between samples and clusters under the model, which is what
self-labelling maximises (1 for confident predictions spread evenly over all clusters). It is
computed on the held-out fold, so a setting that only memorises its training rows does not
win. The score compares fits with the same ``n_clusters``; to choose ``n_clusters`` itself,
use a scoring of your own (see ``SelfLabelingClusterer.score``).

Here the search is over the Sinkhorn regularisation ``sinkhorn_lambda``, on 900 digits with
the defaults otherwise; a grid over several parameters (``propagation_weight``,
``augment_strength``, ...) is written the same way, at one fit per setting and fold.
"""

import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy

X, y = load_digits(return_X_y=True)
X, y = X[:900], y[:900]

search = GridSearchCV(
    SelfLabelingClusterer(n_clusters=10, random_state=0),
    param_grid={"sinkhorn_lambda": [5.0, 25.0]},
    cv=2,
)
search.fit(X)

results = pd.DataFrame(search.cv_results_)
columns = ["param_sinkhorn_lambda", "mean_test_score", "rank_test_score"]
print(results[columns].sort_values("rank_test_score").to_string(index=False))

# %%
# ``best_estimator_`` is refitted on all rows with the best setting. The digits' classes,
# unused by the search, tell how good its clusters are:
best = search.best_estimator_
print(f"best: {search.best_params_}, accuracy {clustering_accuracy(y, best.labels_):.3f}")
