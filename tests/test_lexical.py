"""The lexical space's skops file: a real fitted space round-trips; a file naming any type outside the allow-list
is refused before anything in it is built."""
import os
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines.features import lexical
from pipelines.settings import SAMPLE_DIR


def _sample_texts(n=300):
    styles = pd.read_csv(SAMPLE_DIR / "myntra" / "styles.csv", dtype=str, keep_default_na=False).head(n)
    return styles["productDisplayName"].tolist(), styles["articleType"].tolist()


def test_fitted_lexical_space_round_trips(tmp_path):
    from pipelines.classify.baselines import tfidf_svm_model

    texts, labels = _sample_texts()
    svd = lexical.fit_lexical(texts, dim=16)
    expert = tfidf_svm_model(0).fit(texts, labels)
    lexical.save({"svd": svd, "expert": expert}, tmp_path)
    loaded = lexical.load(tmp_path)
    assert np.array_equal(lexical.transform(loaded["svd"], texts), lexical.transform(svd, texts))
    assert np.array_equal(lexical.expert_scores(loaded["expert"], texts), lexical.expert_scores(expert, texts))


PAYLOAD = '''
from pathlib import Path


class Payload:
    """Builds itself by writing a file: stands for any code a crafted model file could run on load."""

    def __init__(self, marker):
        self.marker = marker

    def __setstate__(self, state):
        Path(state["marker"]).write_text("ran")
        self.__dict__.update(state)
'''


def test_file_with_a_foreign_type_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    (tmp_path / "payload_mod.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    import payload_mod

    marker = tmp_path / "ran.txt"
    lexical.save({"svd": payload_mod.Payload(str(marker)), "expert": None}, tmp_path / "crafted")
    with pytest.raises(lexical.UntrustedModelFile, match="payload_mod.Payload"):
        lexical.load(tmp_path / "crafted")
    assert not marker.exists()
    sys.modules.pop("payload_mod", None)


def test_file_naming_os_system_is_refused(tmp_path):
    lexical.save({"svd": os.system, "expert": None}, tmp_path)
    with pytest.raises(lexical.UntrustedModelFile, match=r"(posix|nt)\.system"):
        lexical.load(tmp_path)
