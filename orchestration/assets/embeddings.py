"""Cached embeddings per platform (text, image, joint) and the catalogue-aligned joint space."""
import hashlib

import numpy as np
import pandas as pd
from dagster import (AllPartitionMapping, AssetExecutionContext, AssetIn, DataVersion, MetadataValue, Output,
                     asset)

from orchestration.partitions import platform_partitions
from orchestration.resources import ProdcatSettings
from pipelines.features.matrices import load_matrix, save_matrix


def _embedding_output(context, settings, modality, platform, manifest, matrix):
    _, matrix_hash = save_matrix(settings.work(), modality, platform, matrix)
    version = hashlib.sha256((matrix_hash + "|".join(manifest["uid"])).encode()).hexdigest()[:16]
    errors = manifest.loc[~manifest["ok"], "error"].value_counts().head(5).to_dict()
    return Output(manifest, data_version=DataVersion(version), metadata={
        "rows": len(manifest), "ok": int(manifest["ok"].sum()), "encoder": manifest.attrs.get("encoder", ""),
        "computed": manifest.attrs.get("n_computed", 0), "cached": manifest.attrs.get("n_cached", 0),
        "seconds": manifest.attrs.get("seconds", 0.0), "failures": MetadataValue.json(errors),
    })


def _embed(context, settings, modality, products):
    from pipelines.features.sharding import cluster_client, embed_products_distributed
    from pipelines.features.store import embed_products

    spec = settings.text_encoder if modality == "text" else settings.image_encoder
    run = settings.value
    with cluster_client(run.dask_scheduler) as client:  # on the dask executor or a configured scheduler: shards
        if client is None:
            manifest, matrix = embed_products(products, modality, spec, run.work("store"), progress=not run.quiet,
                                              loader_workers=run.loader_workers, threads=run.threads,
                                              weights_cache=run.weights_cache)
        else:
            manifest, matrix = embed_products_distributed(products, modality, spec, run.work("store"), client,
                                                          shard_resources=run.dask_shard_resources,
                                                          weights_cache=run.weights_cache)
    return _embedding_output(context, settings, modality, context.partition_key, manifest, matrix)


@asset(partitions_def=platform_partitions, group_name="embeddings", code_version="1",
       ins={"products": AssetIn("normalized_products")},
       description="Text embeddings (title . description) per platform, from the content-addressed store.")
def text_embeddings(context: AssetExecutionContext, settings: ProdcatSettings,
                    products: pd.DataFrame):
    return _embed(context, settings, "text", products)


@asset(partitions_def=platform_partitions, group_name="embeddings", code_version="1",
       ins={"products": AssetIn("normalized_products")},
       description="Image embeddings per platform; products without a decodable image are marked, not zero-filled.")
def image_embeddings(context: AssetExecutionContext, settings: ProdcatSettings,
                     products: pd.DataFrame):
    return _embed(context, settings, "image", products)


def _stack(manifests: dict, modality: str, work) -> tuple[pd.DataFrame, np.ndarray]:
    keys = sorted(manifests)
    return (pd.concat([manifests[k] for k in keys], ignore_index=True),
            np.concatenate([load_matrix(work, modality, k) for k in keys]))


@asset(group_name="embeddings", code_version="1",
       ins={"text": AssetIn("text_embeddings"), "image": AssetIn("image_embeddings"), "splits": AssetIn("splits")},
       description="Projection heads aligning text and image embeddings (symmetric InfoNCE on train pairs).")
def joint_space(context: AssetExecutionContext, settings: ProdcatSettings, text: dict, image: dict,
                splits: pd.DataFrame) -> Output[pd.DataFrame]:
    from models.alignment import retrieval_recall, save_heads, train_alignment

    work = settings.work()
    t_man, t_mat = _stack(text, "text", work)
    i_man, i_mat = _stack(image, "image", work)
    split = splits.set_index("uid")["split"].reindex(t_man["uid"]).to_numpy()
    pairs = t_man["ok"].to_numpy() & i_man["ok"].to_numpy()
    heads = train_alignment(np.nan_to_num(t_mat), np.nan_to_num(i_mat), pairs & (split == "train"))
    out = save_heads(heads, settings.work("joint_space"))
    val = np.flatnonzero(pairs & (split == "val"))[:2000]
    recall = retrieval_recall(heads, t_mat[val], i_mat[val]) if len(val) > 1 else {}
    digest = hashlib.sha256((out / "alignment.safetensors").read_bytes()).hexdigest()[:16]
    summary = pd.DataFrame([{"train_pairs": int((pairs & (split == "train")).sum()), "final_loss": heads.final_loss,
                             **recall}])
    return Output(summary, data_version=DataVersion(digest), metadata={
        "train_pairs": int(summary["train_pairs"][0]), "final_loss": round(heads.final_loss, 4),
        **{k: round(v, 4) for k, v in recall.items() if isinstance(v, float)}, "path": str(out)})


@asset(partitions_def=platform_partitions, group_name="embeddings", code_version="1",
       ins={"text": AssetIn("text_embeddings"), "image": AssetIn("image_embeddings"),
            "space": AssetIn("joint_space")},
       description="Joint image-text vectors per platform (text-only products get their text projection).")
def joint_embeddings(context: AssetExecutionContext, settings: ProdcatSettings, text: pd.DataFrame, image: pd.DataFrame,
                     space: pd.DataFrame):
    from models.alignment import joint_embed, load_heads

    platform, work = context.partition_key, settings.work()
    heads = load_heads(settings.work("joint_space"))
    t_mat, i_mat = load_matrix(work, "text", platform), load_matrix(work, "image", platform)
    has_image = image["ok"].to_numpy()
    matrix = joint_embed(heads, np.nan_to_num(t_mat), np.nan_to_num(i_mat), has_image)
    manifest = pd.DataFrame({"uid": text["uid"], "ok": text["ok"].to_numpy(),
                             "error": text["error"], "content_hash": text["content_hash"]})
    matrix[~manifest["ok"].to_numpy()] = np.nan
    manifest.attrs.update(encoder="alignment-heads", n_computed=len(manifest), n_cached=0)
    return _embedding_output(context, settings, "joint", platform, manifest, matrix)


@asset(group_name="embeddings", code_version="2",
       ins={"products": AssetIn("normalized_products", partition_mapping=AllPartitionMapping())},
       description="Lexical view fitted on the train split: word + char TF-IDF -> SVD (256-d), and a TF-IDF + "
                   "LinearSVC expert whose per-class scores fusion models read (out-of-fold on train rows).")
def lexical_space(settings: ProdcatSettings, products: dict) -> Output[pd.DataFrame]:
    from pipelines.features import lexical
    from pipelines.features.store import text_of

    table = pd.concat([products[k] for k in sorted(products)], ignore_index=True)
    train = table[table["split"] == "train"].reset_index(drop=True)
    texts = [text_of(t, d) for t, d in zip(train["title"], train["description"])]
    svd = lexical.fit_lexical(texts)
    expert, classes, oof = lexical.fit_expert(texts, train["category_path"].tolist(),
                                              (train["platform"] + train["group_id"]).tolist())
    out = settings.work("lexical_space")
    path = lexical.save({"svd": svd, "expert": expert}, out)
    uids = (train["platform"] + ":" + train["product_id"].astype(str)).to_numpy()
    np.save(out / "oof_scores.npy", oof)
    pd.DataFrame({"uid": uids}).to_parquet(out / "oof_uids.parquet", index=False)
    digest = hashlib.sha256(path.read_bytes() + oof.tobytes()).hexdigest()[:16]
    explained = float(svd[1].explained_variance_ratio_.sum())
    return Output(pd.DataFrame([{"train_texts": len(train), "explained_variance": explained,
                                 "expert_classes": len(classes)}]),
                  data_version=DataVersion(digest), metadata={"train_texts": len(train), "expert_classes": len(classes),
                                                              "explained_variance": round(explained, 4)})


@asset(partitions_def=platform_partitions, group_name="embeddings", code_version="2",
       ins={"products": AssetIn("normalized_products"), "space": AssetIn("lexical_space")},
       description="Lexical vectors per platform: [TF-IDF SVD | lexical expert scores (out-of-fold on train rows)].")
def lexical_embeddings(context: AssetExecutionContext, settings: ProdcatSettings, products: pd.DataFrame,
                       space: pd.DataFrame):
    from pipelines.features import lexical
    from pipelines.features.store import text_of

    out = settings.work("lexical_space")
    fitted = lexical.load(out)
    texts = [text_of(t, d) for t, d in zip(products["title"], products["description"])]
    uids = (products["platform"] + ":" + products["product_id"].astype(str)).to_numpy()
    scores = lexical.expert_scores(fitted["expert"], texts)
    oof_row = pd.Series(np.arange(len(pd.read_parquet(out / "oof_uids.parquet"))),
                        index=pd.read_parquet(out / "oof_uids.parquet")["uid"]).reindex(uids).to_numpy()
    in_train = ~np.isnan(oof_row)
    scores[in_train] = np.load(out / "oof_scores.npy")[oof_row[in_train].astype(int)]
    matrix = np.concatenate([lexical.transform(fitted["svd"], texts), scores], 1)
    manifest = pd.DataFrame({"uid": uids, "ok": np.array([bool(t.strip()) for t in texts]), "error": "",
                             "content_hash": ""})
    manifest.attrs.update(encoder="tfidf-svd+svm-expert", n_computed=len(manifest), n_cached=0)
    return _embedding_output(context, settings, "lexical", context.partition_key, manifest, matrix)
