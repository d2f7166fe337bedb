"""Runs one session through the project's Python client (cop_server.client) for the Java tests.

The Java integration test calls this with the same server, image file, clicks and parameters it
used itself, and compares the answer: the two clients must agree cell for cell. It prints plain
tab-separated lines (so the Java side needs no JSON library): the SHA-256 of the RGB pixels it
sent (to prove both clients sent the same input), the number of detections, the count per
class, every polygon's area (sorted), tiles and bytes sent, and the wall time.

    python python_client_run.py HOST:PORT IMAGE '{"clicks": [[x, y, k], ...], "classes": [...],
                                               "image_id": "...", "params": {...}, "encoding": "RAW_RGB"}'
"""

import hashlib
import json
import sys
import time

import numpy as np
from PIL import Image

from cop_server.client import CopClient


def main() -> int:
    target, image_path, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with Image.open(image_path) as im:
        rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    sent = []  # bytes of each tile answered, as the Java side records them

    def count_tile(request, tile):
        sent.append(len(tile.data))
        return tile

    t0 = time.perf_counter()
    with CopClient(target, token=spec.get("token")) as client:
        client.check_protocol()
        result = client.segment(
            source=rgb,
            clicks=[tuple(c) for c in spec["clicks"]],
            classes=spec["classes"],
            image_id=spec["image_id"],
            mpp=spec.get("mpp"),
            params=spec.get("params") or None,
            tile_hook=count_tile,
            encodings=(spec.get("encoding", "RAW_RGB"),),
        )
    seconds = time.perf_counter() - t0
    lines = [f"sha256\t{hashlib.sha256(rgb.tobytes()).hexdigest()}", f"detections\t{len(result.detections)}"]
    lines += [f"count\t{name}\t{n}" for name, n in result.counts().items()]
    lines += [f"area\t{a!r}" for a in sorted(p.area for p in result.polygons())]
    lines.append(f"tiles\t{len(sent)}\t{sum(sent)}")
    lines.append(f"seconds\t{seconds:.3f}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
