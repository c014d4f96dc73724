"""The orjson codec that every stylestream record is serialised with."""

from __future__ import annotations

from typing import Any

import orjson
from faust.serializers import codecs

CODEC_NAME = "orjson"


class OrjsonCodec(codecs.Codec):
    """Faust codec backed by orjson; it rejects NaN and infinity on decode, as JSON does."""

    def _dumps(self, obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    def _loads(self, data: bytes) -> Any:
        return orjson.loads(data)


codecs.register(CODEC_NAME, OrjsonCodec())
