"""The fixed column contracts of the standard feed formats, in the declarative form a shop's YAML uses.

Google Merchant Center product data (https://support.google.com/merchants/answer/7052112): the attribute names
are the TSV header / the XML element names (without the `g:` prefix). Shopify product CSV export: the column
names of Shopify's export; shopify.py merges variant and image rows first and adds the derived columns
`@id` (Variant SKU, else the Handle, numbered when it has several variants) and `@image` (the variant's image,
else the product's first).
"""
from __future__ import annotations

GOOGLE_COLUMNS = {
    "id": "id",
    "title": "title",
    "description": {"column": "description", "optional": True},
    "brand": {"column": "brand", "optional": True},
    "gender": {"hook": "google_gender", "columns": ["gender", "age_group"], "optional": True},
    "group": {"column": "item_group_id", "optional": True},
    "image": {"column": "image_link", "optional": True},
    "native_path": {"column": "product_type", "separator": ">", "fallback": ["google_product_category"],
                    "optional": True},
}

SHOPIFY_COLUMNS = {
    "id": "@id",
    "title": "Title",
    "description": {"column": "Body (HTML)", "parse": "html", "optional": True},
    "brand": {"column": "Vendor", "optional": True},
    "gender": {"hook": "google_gender", "columns": ["Google Shopping / Gender", "Google Shopping / Age Group"],
               "optional": True},
    "group": "Handle",
    "image": {"column": "@image", "optional": True},
    "native_path": {"column": "Type", "separator": ">", "fallback": ["Product Category"], "optional": True},
}

STANDARD_COLUMNS = {"google-tsv": GOOGLE_COLUMNS, "google-xml": GOOGLE_COLUMNS, "shopify": SHOPIFY_COLUMNS}

# canonical gender <-> Google's gender + age_group (also Shopify's "Google Shopping / ..." columns); exact both ways
GOOGLE_GENDER = {"Men": ("male", "adult"), "Women": ("female", "adult"), "Boys": ("male", "kids"),
                 "Girls": ("female", "kids"), "Kids": ("unisex", "kids"), "Unisex": ("unisex", "adult"),
                 "Unknown": ("", "")}
CHILD_AGE_GROUPS = ("newborn", "infant", "toddler", "kids")
