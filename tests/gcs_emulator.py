"""`python tests/gcs_emulator.py PORT BUCKET`: the gcp-storage-emulator GCS API server on
127.0.0.1:PORT (in memory, with BUCKET), for tests/test_gcs.py.

One gap of the emulator is filled here, as the real service behaves: an object download
(`alt=media`) carries the object's generation in `x-goog-generation` /
`x-goog-metageneration` and honours the `ifGenerationMatch` / `ifGenerationNotMatch`
preconditions (412 / 304). TensorStore's gcs driver (Orbax's array data, OCDBT manifests)
reads that header on every read and fails with "Malformed StorageGeneration" without it.
Our code is not involved: every client talks HTTP to this server.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except NotFound:
        return _download(request, response, storage, *args, **kwargs)
    generation = str(obj["generation"])
    match = request.query.get("ifGenerationMatch")
    not_match = request.query.get("ifGenerationNotMatch")
    if match and match[0] != generation:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    if not_match and not_match[0] == generation:
        response.status = HTTPStatus.NOT_MODIFIED
        return None
    response["x-goog-generation"] = generation
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module builds its routing table

from gcp_storage_emulator.server import create_server  # noqa: E402

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()
