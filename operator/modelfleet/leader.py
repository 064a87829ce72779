"""Leader election: exactly one active operator per `coordination.k8s.io/v1` Lease.

Built on the `kubernetes` client's own election (`kubernetes.leaderelection`). A standby campaigns and does
nothing else: no watch, no write. Once it holds the lease it runs the operator in this thread. Fencing follows
controller-runtime: when the lease has not been renewed for the renew deadline the process ends at once
(`os._exit`), so it never acts on a lease another replica may already hold. When the operator stops (SIGTERM),
the lease is released, so a standby takes over at its next retry rather than after the lease expires.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    name: str
    namespace: str
    identity: str
    duration: int = 15  # seconds a standby waits, after the last renewal it saw, before taking over
    renew_deadline: float = 10  # the leader exits when it could not renew for this long
    retry_period: float = 2  # between tries to acquire or renew


def default_identity(env: Mapping[str, str], hostname: str, pid: int) -> str:
    """The pod's name (the chart sets POD_NAME), else `<hostname>-<pid>`."""
    return env.get("POD_NAME") or f"{hostname}-{pid}"


def default_namespace(env: Mapping[str, str], context_namespace: str | None) -> str:
    """The pod's namespace (the chart sets POD_NAMESPACE), else the kubeconfig context's, else `default`."""
    return env.get("POD_NAMESPACE") or context_namespace or "default"


def kubeconfig_namespace() -> str | None:
    """The namespace of the kubeconfig's current context, if there is a kubeconfig and it names one."""
    try:
        _, active = config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG"))
    except (config.ConfigException, OSError):
        return None
    return (active or {}).get("context", {}).get("namespace")


class _TimedApi:
    """CoordinationV1Api whose calls time out, and whose transport errors come as ApiException, which the
    client's LeaseLock handles (a refused connection would otherwise end the election thread)."""

    def __init__(self, api: client.CoordinationV1Api, timeout: float) -> None:
        self.api = api
        self.timeout = timeout

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.api, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, _request_timeout=self.timeout, **kwargs)
            except urllib3.exceptions.HTTPError as exc:
                raise ApiException(reason=f"{type(exc).__name__}: {exc}") from exc

        return call


class FencedLeaseLock(LeaseLock):
    """The client's LeaseLock, plus: a timeout on every call, the time of the last successful write (for
    fencing), and `release`, after which it writes no more."""

    def __init__(self, lease: Lease, api_client: client.ApiClient) -> None:
        super().__init__(lease.name, lease.namespace, lease.identity)
        # A try may take half the renew deadline (client-go bounds the whole renewal by the deadline, not each try
        # by the retry period): a loaded apiserver answering in 3 s must not cost the lease.
        self.api_instance = _TimedApi(client.CoordinationV1Api(api_client), lease.renew_deadline / 2)
        self.written_at: float | None = None  # monotonic time just before the last successful create or update
        self.released = False
        self.mutex = threading.Lock()

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        found, record = super().get(name, namespace)
        holder = record.holder_identity if found else None
        if self.written_at is not None and not self.released and holder not in (None, self.identity):
            _exit(f"lease {namespace}/{name} is held by {holder}")  # the library would act on for the renew deadline
        return found, record

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return self._write(super().create, name, namespace, election_record)

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return self._write(super().update, name, namespace, updated_record)

    def _write(self, write: Callable[..., bool], *args: Any) -> bool:
        with self.mutex:
            if self.released:
                return False
            started = time.monotonic()
            if ok := write(*args):
                self.written_at = started
            elif self.written_at is not None:
                log.warning("could not renew lease %s/%s", self.namespace, self.name)
            return ok

    def release(self) -> None:
        """Clears the holder if it is still us, so a standby takes the lease at its next retry."""
        with self.mutex:
            self.released = True
            found, record = self.get(self.name, self.namespace)
            if not found or record.holder_identity != self.identity:
                return
            self.lease_reference.spec.holder_identity = None
            try:
                self.api_instance.replace_namespaced_lease(self.name, self.namespace, self.lease_reference)
            except ApiException as exc:
                log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc.reason)
                return
            log.info("%s released lease %s/%s", self.identity, self.namespace, self.name)


def _exit(message: str) -> None:
    log.error("%s: exiting", message)
    logging.shutdown()
    os._exit(1)


def _campaign(election: leaderelection.LeaderElection) -> None:
    """The election thread: it returns only when leadership is lost (or it failed), and then the process ends."""
    try:
        election.run()
    except Exception:
        log.exception("leader election failed")
    _exit("leader election stopped")


def _fence(lock: FencedLeaseLock, leading: threading.Event, lease: Lease) -> None:
    """Ends the process once the leader has not renewed for the renew deadline, even when a renewal hangs.

    A process that stood frozen (SIGSTOP, a paused VM) past the deadline ends at its first tick after waking: a
    standby may hold the lease by then, so it must not act on it.
    """
    leading.wait()
    while True:
        time.sleep(lease.retry_period / 4)
        written = lock.written_at
        if written is not None and not lock.released and time.monotonic() - written > lease.renew_deadline:
            _exit(f"lease {lease.namespace}/{lease.name} not renewed for {lease.renew_deadline:g}s")


class _Alive(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"standby": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes are not worth a log line."""


@contextlib.contextmanager
def standby_liveness(endpoint: str | None) -> Iterator[None]:
    """Answers the liveness probe while standing by; kopf serves the same endpoint once leading."""
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)
    server = http.server.ThreadingHTTPServer((url.hostname or "", url.port or 80), _Alive)
    threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def lead(run: Callable[[], None], lease: Lease, api_client: client.ApiClient, liveness: str | None = None) -> None:
    """Blocks until this process holds the lease, then calls `run` in this thread (kopf needs the main thread for
    its signal handlers); releases the lease when `run` returns or raises."""
    lock = FencedLeaseLock(lease, api_client)
    leading = threading.Event()
    election = leaderelection.LeaderElection(
        electionconfig.Config(
            lock,
            lease.duration,
            lease.renew_deadline,
            lease.retry_period,
            onstarted_leading=leading.set,
            onstopped_leading=lambda: _exit(f"lost lease {lease.namespace}/{lease.name}"),
        )
    )
    log.info("%s campaigns for lease %s/%s", lease.identity, lease.namespace, lease.name)
    threading.Thread(target=_campaign, args=(election,), name="leader-election", daemon=True).start()
    threading.Thread(target=_fence, args=(lock, leading, lease), name="lease-fence", daemon=True).start()
    with standby_liveness(liveness):
        leading.wait()
    log.info("%s leads (lease %s/%s): starting the operator", lease.identity, lease.namespace, lease.name)
    try:
        run()
    finally:
        lock.release()
