"""A sample whose label source is null (merge's ``synthetic``) is skipped and counted, not a failure."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from ser_lightning.data.stream.sample import decode_sample
from ser_lightning.data.stream.skips import NullLabelError, SampleDecodeError, SkipCounter, skip_record


def raw(labels: dict) -> dict:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(160, dtype=np.float32), 16000, format="FLAC")
    meta = {"id": "a.1", **{f: {s: v for s, v in labels.items()} for f in ("votes", "distribution", "entropy")}}
    return {"__key__": "a_1", "__url__": "s.tar", "flac": buf.getvalue(), "json": json.dumps(meta).encode()}


def test_a_null_source_raises_null_label_error_and_a_missing_one_a_decode_error():
    sample = raw({"primary": [1.0, 0.0], "synthetic": None})
    with pytest.raises(NullLabelError, match="'synthetic' is null") as err:
        decode_sample(sample, "synthetic", 2)
    assert skip_record(err.value) == {"key": "a_1", "shard": "s.tar", "reason": "label source 'synthetic' is null (no "
                                      "labels of it)"}  # fmt: skip
    with pytest.raises(SampleDecodeError) as missing:
        decode_sample(sample, "merged", 2)
    assert not isinstance(missing.value, NullLabelError)


def test_null_labels_are_counted_apart_and_never_end_a_stream():
    counter = SkipCounter(max_consecutive=3, keep=True)
    for _ in range(10):
        assert counter(NullLabelError("label source 'synthetic' is null", "k", "s.tar")) is True
    assert (counter.count, counter.null, counter.consecutive) == (10, 10, 0)
    assert len(counter.drain()) == 10  # evaluation: each is a skip with its reason
    counter(SampleDecodeError("bad", "k", "s.tar"))
    counter(SampleDecodeError("bad", "k", "s.tar"))
    with pytest.raises(RuntimeError, match="3 bad samples"):
        counter(SampleDecodeError("bad", "k", "s.tar"))
