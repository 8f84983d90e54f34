"""Adapting the classifier to a shop it never trained on, from that shop's unlabelled products (issue 18).

Ingredients, each a switch of AdaptConfig (adapted.py) so the measurement can turn it on and off:
    pseudo_labels.py  self-training: the new shop's confident predictions, whole product groups, a class-balanced
                      cap per leaf, the confidence threshold chosen on the *training* shops' validation rows
    augment.py        title-style augmentation: restyled copies of the training shops' train rows (brand first,
                      brand removed, short titles, no description, casing)
    centring.py       per-shop feature standardisation (each shop centred by its own mean)
    fusion            late or early fusion of the lexical and text views (onboard/classifier.onboard_strategy)
Around them:
    shift_routing.py  two-stage routing and needs_review for the new shop, the threshold read off the agreement
                      between the stages on its unlabelled products
    active.py         which groups a person should label first (uncertainty + diversity) and the labelling curves
    store.py          the adapted classifier on disk (what classify --shop and onboarding load)
    onboarding.py     adapted_for_shop: the one entry the shop_adaptation asset, `prodcat onboard` and
                      `prodcat classify --shop` share
    measure.py        `prodcat adapt measure`: all of it leave-one-platform-out on the benchmark
views.py computes the feature matrices once. The new shop's products enter through
onboard.products.require_unlabelled: a frame holding a label column raises LabelLeak, and no threshold, epoch or
hyperparameter is chosen with the unseen shop's labels (the labelling curves' oracle answers only for the groups
it is asked about).
"""
