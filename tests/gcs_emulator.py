"""A local GCS emulator (gcp-storage-emulator, from PyPI) for the gs:// tests.

`emulated_gcs()` starts it in this process on 127.0.0.1 (a free port, one
bucket, objects in memory) and points at it every library that honours an
emulator endpoint:

  gcsfs (epath's fsspec backend)  STORAGE_EMULATOR_HOST; EPATH_USE_TF=false
                                  makes epath use it instead of tf.io.gfile
  google-cloud-storage (orbax's   STORAGE_EMULATOR_HOST (anonymous
  bucket look-ups)                credentials)
  tensorstore (orbax's arrays)    TENSORSTORE_GCS_HTTP_URL, with
                                  GOOGLE_AUTH_TOKEN_FOR_TESTING (no
                                  credential search)

TensorFlow's GCS file system (tf.io.gfile, and the tf.summary writer clu
uses for TensorBoard) has no endpoint setting: its URLs are fixed to
googleapis.com, so it is never pointed at a gs:// path here (see
test_cloud_paths for how its path handling is tested instead).

Nothing may reach the real network: credential searches are pointed at a
closed local port (GCE_METADATA_*), and `no_remote_connections()` refuses,
and records, any Python-level DNS look-up or connection off 127.0.0.1.
"""

from __future__ import annotations

import contextlib
from http import server as http_server
import logging
import os
import socket
import threading

BUCKET = "poisonjax-test"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(url: str, closed: str) -> dict[str, str]:
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "EPATH_USE_TF": "false",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # No gRPC bucket probe.
      "GOOGLE_CLOUD_PROJECT": "poisonjax-test",
      "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed,
      "GCE_METADATA_ROOT": closed, "NO_GCE_CHECK": "true",
  }


def _clear_client_caches() -> None:
  """Clients built before (or for) the emulator are not reused."""
  import fsspec
  import gcsfs.core
  from etils.epath import backend, gpath
  from orbax.checkpoint._src.path import gcs_utils

  gpath._is_tf_installed.cache_clear()  # Re-reads EPATH_USE_TF.
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  gcsfs.core.GCSFileSystem.clear_instance_cache()
  for proto in ("gs", "gcs"):  # The plain client, whatever gcsfs registered.
    fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
  gcs_utils.get_bucket.cache_clear()


def _download_with_generation(download):
  """The emulator's media download, plus the x-goog-generation header real
  GCS sends: tensorstore reads an object's generation from it, and without
  it a conditional rewrite of an OCDBT manifest it has read fails with
  "Malformed StorageGeneration"."""

  def handler(request, response, storage, *args, **kwargs):
    try:
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # pylint: disable=broad-except
      pass  # Absent: the download answers 404 itself.
    return download(request, response, storage, *args, **kwargs)

  return handler


class _ManyClientsServer(http_server.ThreadingHTTPServer):
  """The emulator's HTTP server, for clients that open dozens of connections
  at once (tensorstore writing a checkpoint, gcsfs listing): the stock
  server accepts one connection at a time with a queue of 5, so on a busy
  machine connections wait past their clients' timeouts (seen as broken
  pipes, "Max retries exceeded" and torn responses). Here each connection
  gets a thread and the queue is deep; requests still run one at a time
  (the emulator's storage is not thread-safe)."""
  request_queue_size = 256
  daemon_threads = True


def _serve_many(api_thread) -> None:
  """APIThread.run of gcp_storage_emulator, on _ManyClientsServer."""
  from functools import partial
  from gcp_storage_emulator import server as emulator_server
  api_thread._httpd = _ManyClientsServer(
      (api_thread._host, api_thread._port),
      partial(emulator_server.RequestHandler, api_thread._storage))
  api_thread.is_running.set()
  api_thread._httpd.serve_forever()


def _one_at_a_time(handle, lock: threading.Lock):
  def locked(router, method):
    with lock:
      return handle(router, method)
  return locked


@contextlib.contextmanager
def emulated_gcs():
  """Yields "gs://BUCKET" served by a fresh in-memory emulator."""
  import fsspec
  import pytest
  from gcp_storage_emulator.server import create_server

  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  from gcp_storage_emulator import server as emulator_server
  from gcp_storage_emulator.handlers import objects

  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(emulator_server.APIThread, "run", _serve_many)
    mp.setattr(emulator_server.Router, "handle", _one_at_a_time(
        emulator_server.Router.handle, threading.Lock()))
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    with_generation = _download_with_generation(objects.download)
    for _, methods in emulator_server.HANDLERS:
      for method, handler in list(methods.items()):
        if handler is objects.download:
          mp.setitem(methods, method, with_generation)
    # The JSON API's GET ...?alt=media (tensorstore's reads) reaches the
    # download through this module-level name, not through HANDLERS.
    mp.setattr(objects, "download", with_generation)
    for key, value in _env(url, f"127.0.0.1:{free_port()}").items():
      mp.setenv(key, value)
    mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    _clear_client_caches()
    try:
      yield f"gs://{BUCKET}"
    finally:
      _clear_client_caches()
      server.stop()
  _clear_client_caches()


def forget_listings() -> None:
  """Drops the clients' cached listings (gcsfs caches a folder's listing,
  so an object written after it was listed can read as absent)."""
  _clear_client_caches()


def bucket_objects() -> dict[str, int]:
  """{object name: size} of the bucket, listed by google-cloud-storage."""
  from google.cloud import storage

  client = storage.Client()
  return {b.name: b.size for b in client.list_blobs(BUCKET)}


@contextlib.contextmanager
def no_remote_connections():
  """Refuses (and lists) DNS look-ups and connections off 127.0.0.1.

  Covers Python's sockets (gcsfs/aiohttp, google-cloud-storage/requests);
  tensorstore and TensorFlow use their own C++ clients, kept local by the
  endpoint and credential variables above.
  """
  import pytest

  attempts = []
  real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

  def local(host) -> bool:
    return str(host) in ("127.0.0.1", "localhost", "::1")

  def getaddrinfo(host, *args, **kwargs):
    if not local(host):
      attempts.append(f"dns {host}")
      raise socket.gaierror(f"test: no network ({host})")
    return real_getaddrinfo(host, *args, **kwargs)

  def connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(host):
      attempts.append(f"connect {address}")
      raise OSError(f"test: no network ({address})")
    return real_connect(sock, address)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket, "getaddrinfo", getaddrinfo)
    mp.setattr(socket.socket, "connect", connect)
    yield attempts


@contextlib.contextmanager
def unreachable_gcs():
  """Every GCS client pointed at a closed local port: a bucket nobody answers
  for (gcsfs then retries for about 85 s), with nothing leaving 127.0.0.1.

  The gcsfs client also gets the port as its fixed endpoint: a look-up
  abandoned by the code under test and still retrying after this context
  keeps knocking on 127.0.0.1, not on storage.googleapis.com; its last
  words ("out of retries", half a minute later) are not logged.
  """
  import fsspec
  import pytest

  logging.getLogger("gcsfs").setLevel(logging.CRITICAL)  # For good: see above.
  closed = f"127.0.0.1:{free_port()}"
  with pytest.MonkeyPatch.context() as mp:
    for key, value in _env(f"http://{closed}", closed).items():
      mp.setenv(key, value)
    mp.setitem(fsspec.config.conf, "gcs",
               {"token": "anon", "endpoint_url": f"http://{closed}"})
    _clear_client_caches()
    try:
      # Not BUCKET: poisonjax.files remembers buckets that answered (an
      # emulator's, earlier in this process) and would not look again.
      yield "gs://poisonjax-unreachable"
    finally:
      _clear_client_caches()
  _clear_client_caches()
