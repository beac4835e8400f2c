"""
Clustering text from a sparse TF-IDF matrix
===========================================

``fit``, ``predict`` and ``transform`` accept scipy sparse matrices as they are: rows of
non-negative sparse features are detected as ``input_kind="sparse"``, L2-normalised (cosine
geometry), and fed to the first layer as sparse batches, so time and memory follow the number
of non-zeros and a TF-IDF matrix of a large vocabulary is never densified. Training starts
from KMeans labels in that geometry, and its views of a document drop a random share of its
terms. The corpus
here is built inside the example: short documents about four topics, each mixing words of its
topic with common words and a few words of the other topics. The topics are used only to
score, and to read the clusters by their most typical terms.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from sklearn_selflabel import SelfLabelingClusterer, clustering_accuracy
from sklearn_selflabel.plotting import plot_confusion

TOPICS = {
    "space": "orbit rocket planet astronaut launch telescope galaxy satellite mars moon comet",
    "cooking": "recipe oven garlic flour bake simmer onion butter spice dough sauce pepper",
    "football": "goal striker referee penalty league match keeper coach stadium tackle season",
    "finance": "stock market shares investor bank interest inflation bond dividend profit fund",
}
COMMON = "people said new year time today week best good many first last".split()


def make_corpus(n_per_topic: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """Documents of 6 topic words, 6 common words and 2 words of other topics, shuffled."""
    vocabularies = [words.split() for words in TOPICS.values()]
    documents, topics = [], []
    for topic, vocabulary in enumerate(vocabularies):
        others = [word for i, words in enumerate(vocabularies) if i != topic for word in words]
        for _ in range(n_per_topic):
            words = [
                *rng.choice(vocabulary, 6),
                *rng.choice(COMMON, 6),
                *rng.choice(others, 2),
            ]
            documents.append(" ".join(rng.permutation(words)))
            topics.append(topic)
    return documents, np.array(topics)


documents, topics = make_corpus(150, np.random.default_rng(0))
vectorizer = TfidfVectorizer()
X = vectorizer.fit_transform(documents)  # scipy.sparse CSR, (600, n_terms)
print(f"{X.shape[0]} documents, {X.shape[1]} terms, {X.nnz / np.prod(X.shape):.1%} non-zero")
print("for example:", documents[0])

model = SelfLabelingClusterer(n_clusters=4, random_state=0)
labels = model.fit_predict(X)
print(f"accuracy {clustering_accuracy(topics, labels):.3f}")

# %%
# The most typical terms of each cluster: the largest mean TF-IDF over its documents.
terms = vectorizer.get_feature_names_out()
for cluster in range(4):
    mean_tfidf = np.asarray(X[labels == cluster].mean(axis=0)).ravel()
    print(f"cluster {cluster}: {', '.join(terms[np.argsort(-mean_tfidf)[:6]])}")

# %%
# Topics against clusters, in the matched order.
ax = plot_confusion(model, y_true=topics)
ax.set_yticks(range(4), list(TOPICS))
plt.show()
