"""Zero-label adaptation of the onboarding classifier to a shop it never trained on (issue 18, first part).

A new shop arrives with thousands of unlabelled products. Two ingredients use them, each a switch (AdaptConfig):
    centring.py       per-shop feature standardisation: every shop's vectors centred by that shop's own mean (the
                      training shops by theirs, the new shop by the mean of its unlabelled products)
    pseudo_labels.py  self-training: the new shop's confident predictions, whole product groups, a class-balanced
                      cap per leaf, the confidence threshold chosen on the *training* shops' validation rows
views.py computes the feature matrices once (lexical view refitted on the training shops, MiniLM vectors from the
store), adapted.py trains the adapted classifier, measure.py scores it leave-one-platform-out. The new shop's
products enter through onboard.products.require_unlabelled: a frame holding a label column raises LabelLeak, and no
threshold, epoch or hyperparameter is chosen with the unseen shop's labels.
"""
