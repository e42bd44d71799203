"""Test session setup: 8 fake CPU devices for every test, so multi-device code runs on CI, and
one persistent compilation cache for the whole session.

This must run before JAX initialises its backends, hence at conftest import time.

The cache: most of a tiny run's time is XLA compiling the same few programs (a smoke run's
train and eval steps), again in every test and every subprocess. One directory per session
(or the one `JAX_COMPILATION_CACHE_DIR` names), with no minimum compile time or size, is set
in the environment, so the in-process tests and every process a test starts (which inherit the
environment) compile each program once. A cached program is the one XLA compiled, so every
bitwise comparison holds as it would without the cache, at the optimization level users run.

Also the ``gcs_emulator`` fixture: a local Google Cloud Storage server (``gs://`` without a
network or an account) that every client a run uses is pointed at.
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="resnet-jax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import logging  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http import HTTPStatus, server as http_server  # noqa: E402
from urllib.parse import quote  # noqa: E402

import pytest  # noqa: E402

GCS_BUCKET = "bucket"
_GCS_TEST_DEPENDENCIES = ("gcp_storage_emulator", "gcsfs", "google.cloud.storage")


class _Emulator(http_server.HTTPServer):
    """The emulator's request handler, one request at a time (its store has no locks), with a
    listen queue deep enough for TensorStore's concurrent connections (the default 5 drops
    connections, which then wait for TCP's 1-3-7 s retransmits)."""
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass  # a client that hung up early (retries, cancelled reads): not the test's business


def _precondition(request, storage, name: str | None) -> HTTPStatus | None:
    """GCS's generation preconditions, which the emulator ignores: `ifGenerationMatch=N` (0:
    the object must not exist) and `ifGenerationNotMatch=N`. TensorStore's OCDBT commits write
    with them (and revalidate cached reads with them); its ranged reads learn an object's
    generation from the x-goog-generation header, which the emulator does not send either."""
    if name is None:
        return None
    obj = storage.objects.get(request.params["bucket_name"], {}).get(name)
    current = int(obj["generation"]) if obj else 0
    match = request.query.get("ifGenerationMatch")
    if match and int(match[0]) != current:
        return HTTPStatus.PRECONDITION_FAILED
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match and int(not_match[0]) == current:
        return HTTPStatus.NOT_MODIFIED if request.method == "GET" else \
            HTTPStatus.PRECONDITION_FAILED
    return None


def _conforming(handler):
    """`handler` with GCS's generation preconditions and generation headers on media reads."""
    def handle(request, response, storage, *args, **kwargs):
        params = request.params or {}
        name = params.get("dest_object_id") or params.get("object_id")
        if name is None and "name" in request.query and "upload_id" not in request.query:
            name = request.query["name"][0]  # an upload names its object in the query
        if name is None and request.query.get("uploadType") == ["multipart"]:
            name = (request.data or {}).get("meta", {}).get("name")  # ... or in its metadata
        failed = _precondition(request, storage, name) if "bucket_name" in params else None
        if failed is not None:
            response.status = failed
            if failed is HTTPStatus.PRECONDITION_FAILED:
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return None
        result = handler(request, response, storage, *args, **kwargs)
        media = request.query.get("alt") == ["media"] or "/download/" in request.path
        if media and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT) and name:
            obj = storage.objects[params["bucket_name"]][name]
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        return result
    return handle


def _move(request, response, storage, *args, **kwargs):
    """objects.move (`POST .../o/SRC/moveTo/o/DST`), what gcsfs renames with (the emulator
    answers 501, and gcsfs then retries for half a minute before it copies and deletes)."""
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    target = request.params["dest_object_id"]
    try:
        obj, data = dict(storage.get_file_obj(bucket, source)), storage.get_file(bucket, source)
    except Exception:  # noqa: BLE001 - the emulator's NotFound
        response.status = HTTPStatus.NOT_FOUND
        return
    generation = str(time.time_ns())
    obj.update(name=target, id=f"{bucket}/{target}/{generation}", generation=generation,
               metageneration="1", selfLink=f"/storage/v1/b/{bucket}/o/{quote(target, safe='')}")
    obj.pop("mediaLink", None)
    storage.create_file(bucket, target, data, obj)
    storage.delete_file(bucket, source)
    response.json(obj)


class EmulatedGCS:
    """A running emulator: `url`, and the bucket's objects as the server holds them."""

    def __init__(self, url: str, storage):
        self.url, self._storage = url, storage

    def names(self) -> list[str]:
        """Object names in the bucket (no leading slash), sorted."""
        return sorted(self._storage.objects.get(GCS_BUCKET, {}))

    def read(self, name: str) -> bytes:
        return self._storage.get_file(GCS_BUCKET, name)

    def wipe(self) -> None:
        self._storage.wipe(keep_buckets=True)


@pytest.fixture(scope="session")
def _gcs_server():
    for module in _GCS_TEST_DEPENDENCIES:
        pytest.importorskip(module, reason=f"{module} is missing: pip install -e '.[test]' "
                            "installs what the gs:// tests need")
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.storage import Storage

    quiet = [(logging.getLogger(name), logging.getLogger(name).level)
             for name in ("gcp_storage_emulator", "api.object", "api.bucket")]
    for logger, _ in quiet:
        logger.setLevel(logging.CRITICAL)  # every 404 is logged as an error
    move = (rf"^{emulator.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/"
            r"(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {"POST": _move})
    routes = tuple((regex, {method: _conforming(handler) for method, handler in methods.items()})
                   for regex, methods in (move, *emulator.HANDLERS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(emulator, "HANDLERS", routes)
        storage = Storage(use_memory_fs=True)
        buckets.create_bucket(GCS_BUCKET, storage)
        httpd = _Emulator(("127.0.0.1", 0), lambda *a: emulator.RequestHandler(storage, *a))
        thread = threading.Thread(target=httpd.serve_forever, name="gcs-emulator", daemon=True)
        thread.start()
        try:
            yield EmulatedGCS(f"http://127.0.0.1:{httpd.server_address[1]}", storage)
        finally:
            httpd.shutdown()
            httpd.server_close()
            for logger, level in quiet:
                logger.setLevel(level)


@pytest.fixture
def gcs_emulator(_gcs_server, monkeypatch, tmp_path):
    """``gs://bucket/...`` served by a local GCS emulator (gcp-storage-emulator, in memory,
    with GCS's generation preconditions and objects.move added), with every client a run uses
    pointed at it the way a user would point them at an emulator:

    - TensorStore's ``gcs`` driver (orbax's array data): ``TENSORSTORE_GCS_HTTP_URL`` and a
      fixed bearer token (``GOOGLE_AUTH_TOKEN_FOR_TESTING``);
    - google-cloud-storage (orbax asks it about the bucket) and gcsfs: ``STORAGE_EMULATOR_HOST``;
    - etils epath: through fsspec/gcsfs (as with ``EPATH_USE_TF=false``; TensorFlow's own GCS
      client has no emulator setting), gcsfs anonymous and without its gRPC bucket-type probe.

    Google's metadata server is pointed at a closed local port, so no credential lookup leaves
    the machine. The current directory is an empty temporary folder that must stay empty.
    Yields an `EmulatedGCS`; its bucket is emptied afterwards."""
    import fsspec
    import gcsfs.core
    from etils.epath import backend, gpath
    from orbax.checkpoint._src.path import gcs_utils

    url = _gcs_server.url
    for name, value in {"TENSORSTORE_GCS_HTTP_URL": url, "STORAGE_EMULATOR_HOST": url,
                        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
                        "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
                        "NO_GCE_CHECK": "true"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)

    class AnonymousGCS(gcsfs.core.GCSFileSystem):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "token": "anon", "endpoint_url": url})

    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    registry = __import__("fsspec.registry", fromlist=["_registry"])._registry
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry, protocol, AnonymousGCS)
    caches = (backend.fsspec_backend._get_filesystem, gcs_utils.get_bucket)

    def clear():
        for cache in caches:
            cache.cache_clear()
        AnonymousGCS.clear_instance_cache()
        fsspec.AbstractFileSystem.clear_instance_cache()
    clear()
    local = tmp_path / "cwd"
    local.mkdir()
    monkeypatch.chdir(local)
    yield _gcs_server
    clear()
    _gcs_server.wipe()
    assert sorted(p.name for p in local.iterdir()) == [], \
        "something was written locally instead of to gs://"


def pytest_unconfigure(config):
    """The session's compilation cache goes with it (only the one this process made: pytest-xdist's
    workers inherit the environment, so they use their controller's)."""
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def mp_worker():
    """tests/train/_mp_worker.py as a module: the one place that starts local processes joined
    by `jax.distributed` (`run_workers`, `init_distributed`), `free_port` and `load_module`."""
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "train", "_mp_worker.py")
    spec = importlib.util.spec_from_file_location("_mp_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The suite's time budget (setup.cfg suite_budget_s, slow_test_s): tests/suite_budget.py, a
# plugin of its own (tests/test_suite_budget.py runs it on small suites).
def _load_suite_budget():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "suite_budget.py")
    spec = importlib.util.spec_from_file_location("resnet_jax_suite_budget", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_suite_budget = _load_suite_budget()
pytest_addoption = _suite_budget.pytest_addoption
pytest_runtest_makereport = _suite_budget.pytest_runtest_makereport
pytest_configure = _suite_budget.pytest_configure

