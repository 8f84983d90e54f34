"""The review loop (issue 20): a catalogue team confirms or corrects what the model was unsure of, and the next
model learns from it.

    store.py              the append-only decision table (SQLAlchemy Core; SQLite by default)
    queues.py             the three queues of an onboarding/classification output folder (needs review, label first,
                          proposed mappings), their items and progress
    labels.py             decisions -> the shop's labels (applied to the catalogue)
    mapping_decisions.py  accepted mapping decisions -> the shop's mapping table
    label_studio.py       a queue as Label Studio tasks; Label Studio annotations back into decisions
    page.py               the server-rendered review page (HTML + a little JavaScript); the routes are in
                          pipelines/inference/review_routes.py
"""
