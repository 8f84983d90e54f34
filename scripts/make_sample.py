"""Build the embedded raw-format sample in data/sample/ from ../shared/benchmark (deterministic).

Stratified by native category so that most taxonomy nodes appear, then topped up at random; images copied
alongside. Usage: python scripts/make_sample.py [--src ../shared/benchmark] [--out data/sample]
"""
import argparse
import csv
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FIELD_BYTES = 16 * 1024 * 1024  # as pipelines/ingest/shops: long descriptions fit; sys.maxsize overflows on Windows

PLATFORMS = {
    # file, target rows, per-category cap, category key, image path
    "myntra": ("styles.csv", 1200, 12, lambda r: (r["masterCategory"], r["subCategory"], r["articleType"]),
               lambda r: Path("images") / f"{r['id']}.jpg"),
    "hm": ("articles.csv", 600, 8, lambda r: (r["product_group_name"], r["product_type_name"]),
           lambda r: Path("images") / r["article_id"][:3] / f"{r['article_id']}.jpg"),
    "flipkart": ("flipkart_com-ecommerce_sample.csv", 1200, 8, lambda r: flipkart_key(r["product_category_tree"]), None),
}


FLIPKART_FASHION = {"Clothing", "Footwear", "Jewellery", "Watches", "Bags, Wallets & Belts", "Sunglasses", "Eyewear"}


def flipkart_key(tree: str) -> tuple:
    path = json.loads(tree)[0].split(" >> ")
    if len(path) < 3:
        return ("<broken tree>",)  # one stratum, not one per product name
    # fine strata for fashion, one per department for the ~40% non-fashion rows (kept: they test quarantine)
    return tuple(path[:3]) if path[0] in FLIPKART_FASHION else (path[0],)


def sample_rows(rows, target, cap, key, rng):
    by_cat = defaultdict(list)
    for i, r in enumerate(rows):
        try:
            by_cat[key(r)].append(i)
        except Exception:
            by_cat[("?",)].append(i)
    chosen = set()
    for cat in sorted(by_cat):
        idx = by_cat[cat]
        chosen.update(rng.sample(idx, min(cap, len(idx))))
    rest = [i for i in range(len(rows)) if i not in chosen]
    chosen.update(rng.sample(rest, max(0, min(len(rest), target - len(chosen)))))
    if len(chosen) > target:  # more categories than room: drop at random, not by file position
        chosen = set(rng.sample(sorted(chosen), target))
    return sorted(chosen)


def main():
    csv.field_size_limit(MAX_FIELD_BYTES)
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=str(ROOT.parent / "shared" / "benchmark"))
    ap.add_argument("--out", default=str(ROOT / "data" / "sample"))
    args = ap.parse_args()
    src, out = Path(args.src), Path(args.out)
    for platform, (fname, target, cap, key, image) in PLATFORMS.items():
        rng = random.Random(f"prodcat-sample-{platform}")
        with (src / platform / fname).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames, list(reader)
        keep = [rows[i] for i in sample_rows(rows, target, cap, key, rng)]
        dest = out / platform
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        with (dest / fname).open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            w.writeheader()
            w.writerows(keep)
        n_img = 0
        for r in keep if image else []:
            p = src / platform / image(r)
            if p.exists():
                (dest / image(r)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest / image(r))
                n_img += 1
        print(f"{platform}: {len(keep)} rows, {n_img} images -> {dest}")


if __name__ == "__main__":
    main()
