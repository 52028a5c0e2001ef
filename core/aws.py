"""boto3 clients, created once per pipeline.

Credentials, and endpoints unless the YAML sets one, come from boto3's own chain: IRSA on EKS,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SQS`` / ``AWS_ENDPOINT_URL_S3`` for emulators, the usual
``AWS_*`` variables and profiles elsewhere.

Factories receive clients that are not created yet: creating a botocore client resolves
credentials, which can query the instance metadata service, and ``validate`` must stay offline.
The runner creates them all in the main thread before any worker starts (:meth:`connect`);
creating clients is not thread-safe, using them is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from botocore.config import Config

from sqs_processor.objectstore import ObjectStoreWriter


class AwsClients:
    """Hands out one boto3 client per service, sharing a session and a botocore Config.

    The connection pool is sized to the number of threads that can call a client at once, so
    concurrent workers never see "connection pool is full".
    """

    def __init__(
        self,
        *,
        region: str,
        endpoint_url: str | None = None,
        max_pool_connections: int = 10,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 5,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._session = boto3.session.Session(region_name=region)
        self._config = Config(
            region_name=region,
            max_pool_connections=max_pool_connections,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            user_agent_extra="sqs-processor",
        )
        self._clients: dict[str, Any] = {}
        self._stores: dict[tuple[str, str], ObjectStoreWriter] = {}
        self._timeouts = (connect_timeout, read_timeout, max_attempts)
        self._hooks: list[Callable[[str, Any], None]] = []
        self._lock = threading.Lock()

    def add_client_hook(self, hook: Callable[[str, Any], None]) -> None:
        """Call ``hook(service, client)`` for every real client, now and when one is created."""
        with self._lock:
            self._hooks.append(hook)
            created = [(s, c) for s, c in self._clients.items() if c is not None]
            created += [("s3", store) for store in self._stores.values() if store.connected]
        for service, client in created:
            hook(service, client)

    def client(self, service: str) -> Any:
        """The shared client for ``service`` ("sqs", "s3", ...), created when first used."""
        with self._lock:
            if service not in self._clients:
                self._clients[service] = None
        return _LazyClient(self, service)

    def object_store(self, bucket: str, settings: Mapping[str, Any]) -> ObjectStoreWriter:
        """A writer of objects into ``bucket`` through obstore, with this session's credentials
        and endpoint (:mod:`sqs_processor.objectstore`); one per bucket and settings, connected
        by :meth:`connect`."""
        key = (bucket, repr(sorted(settings.items())))
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                connect_timeout, read_timeout, max_attempts = self._timeouts
                store = self._stores[key] = ObjectStoreWriter(
                    bucket, settings, session=self._session, region=self.region,
                    endpoint_url=self.endpoint_url, connect_timeout=connect_timeout,
                    read_timeout=read_timeout, max_attempts=max_attempts)
            return store

    def _real(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                kwargs: dict[str, Any] = {"config": self._config}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                client = self._session.client(service, **kwargs)
                self._clients[service] = client
                for hook in self._hooks:
                    hook(service, client)
            return client

    def connect(self) -> None:
        """Create every client handed out so far (resolving credentials), from this thread."""
        for service in list(self._clients):
            self._real(service)
        for store in list(self._stores.values()):
            if not store.connected:
                store.connect()
                with self._lock:
                    hooks = list(self._hooks)
                for hook in hooks:
                    hook("s3", store)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                close = getattr(client, "close", None)
                if close is not None:
                    close()
            self._clients.clear()
            for store in self._stores.values():
                store.close()


class _LazyClient:
    """Stands in for a boto3 client until first used; then every attribute is the real one's."""

    __slots__ = ("_client", "_owner", "_service")

    def __init__(self, owner: AwsClients, service: str) -> None:
        self._owner = owner
        self._service = service
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        client = self._client
        if client is None:
            client = self._client = self._owner._real(self._service)
        return getattr(client, name)

    def __repr__(self) -> str:
        state = "created" if self._client is not None else "not created yet"
        return f"<{self._service} client, {state}>"

