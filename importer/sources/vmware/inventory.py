"""The vSphere inventory a VDDK import needs, through pyvmomi (VMware's Python SDK): the VM by
its UUID, the disk by its backing file, snapshots, and changed block tracking's changed areas.

Lookups follow CDI (docs/pod-contract.md 4.6): the VM by instance UUID then BIOS UUID in every
datacenter; the disk in the VM's current hardware, then in every snapshot, then along the
backing chain of the first root snapshot's disks; a snapshot by its managed object id or its
name. Changed areas are paged: vSphere answers at most ~2000 areas per call, and a caller must
ask again from the end of the last page (CDI's snapshot-to-snapshot path asks for the first page
again and again, quirk Q15). A session that expired is logged in again once per call.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import Security, vim, vmodl

from ... import advice
from ...errors import (
    ImporterError,
    SourceAuthError,
    SourceError,
    SourceNotFoundError,
    SourceTLSError,
    SourceUnavailableError,
    SourceUnreachableError,
)
from ..tls import make_ssl_context

__all__ = ["VSphere", "normalize_thumbprint"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: how deep a disk's backing chain is followed (CDI: 25)
MAX_CHAIN = 25


def normalize_thumbprint(value: str) -> str:
    """`AA:BB:...` (as vSphere shows it) to the lowercase hex pyvmomi compares."""
    return value.replace(":", "").replace(" ", "").lower()


class VSphere:
    def __init__(self, endpoint: str, user: str, password: str, *, thumbprint: str | None,
                 ca_dirs: list[Path], insecure: bool, timeout: float = 60.0) -> None:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if not parts.hostname:
            raise SourceError(f"{endpoint!r} names no vCenter or ESXi host")
        self.host = parts.hostname
        self._port = parts.port or 443
        self._user, self._password = user, password
        self._thumbprint = normalize_thumbprint(thumbprint) if thumbprint else None
        if self._thumbprint:
            # pinned: the certificate whose thumbprint matches is the only one trusted (pyvmomi
            # compares thumbprints only when ordinary verification fails, so an unverified
            # context would accept anyone)
            self._ctx = self._pinned_context(timeout)
        elif insecure or not ca_dirs:
            if not insecure:
                log.warning("No certificate directory provided, falling back to insecure TLS "
                            "connection")
            self._ctx = ssl._create_unverified_context()
        else:
            self._ctx = make_ssl_context(ca_dirs, insecure=False)
        self._timeout = timeout
        self._si: Any = None
        self._login()

    # ------------------------------------------------------------------ session

    def _pinned_context(self, timeout: float) -> ssl.SSLContext:
        where = f"{self.host}:{self._port}"
        probe = ssl._create_unverified_context()
        try:
            with socket.create_connection((self.host, self._port), timeout=timeout) as raw, \
                    probe.wrap_socket(raw, server_hostname=self.host) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLError as exc:
            raise SourceTLSError(f"{where}: TLS handshake failed ({exc.reason or exc})") from exc
        except ConnectionRefusedError as exc:
            raise SourceUnreachableError(f"{where}: connection refused; check the URL and "
                                         "that vCenter/ESXi runs") from exc
        except socket.gaierror as exc:
            raise SourceUnreachableError(f"{where}: the host name does not resolve") from exc
        except OSError as exc:
            raise SourceUnavailableError(f"{where}: {exc!r}") from exc
        if not der:
            raise SourceTLSError(f"{where} presented no certificate")
        algo = {40: "sha1", 64: "sha256", 128: "sha512"}.get(len(self._thumbprint or ""))
        if algo is None:
            raise SourceError(f"thumbprint {self._thumbprint!r} is not a SHA-1, SHA-256 or "
                              "SHA-512 hex digest")
        actual = hashlib.new(algo, der).hexdigest()
        if actual != self._thumbprint:
            raise SourceTLSError(f"{where} presents a certificate whose {algo.upper()} "
                                 f"thumbprint is {_colons(actual)}, not the "
                                 f"{_colons(self._thumbprint or '')} expected; check the "
                                 "thumbprint (IMPORTER_THUMBPRINT, --thumbprint)")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the certificate itself is pinned, whatever names it holds
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as the trust anchor
        ctx.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return ctx

    def _login(self) -> None:
        where = f"{self.host}:{self._port}"
        try:
            self._si = SmartConnect(  # type: ignore[no-untyped-call]
                host=self.host, port=self._port, user=self._user, pwd=self._password,
                sslContext=self._ctx, thumbprint=self._thumbprint,
                httpConnectionTimeout=self._timeout)
        except vim.fault.InvalidLogin as exc:
            raise SourceAuthError(f"{where} refused the login of {self._user!r}: {_msg(exc)}; "
                                  "check the user name and password") from exc
        except Security.ThumbprintMismatchException as exc:
            raise SourceTLSError(f"{where} presents a certificate whose SHA-1 thumbprint is "
                                 f"{_colons(exc.actual)}, not the {_colons(exc.expected)} "
                                 "expected; check the thumbprint (IMPORTER_THUMBPRINT, "
                                 "--thumbprint)") from exc
        except ssl.SSLError as exc:
            raise SourceTLSError(f"{where}: TLS verification failed ({exc.reason or exc}); give "
                                 f"the CA ({advice.ca()}) or {advice.insecure()} with the "
                                 f"thumbprint ({advice.thumbprint()})") from exc
        except ConnectionRefusedError as exc:
            raise SourceUnreachableError(f"{where}: connection refused; check the URL and "
                                         "that vCenter/ESXi runs") from exc
        except socket.gaierror as exc:
            raise SourceUnreachableError(f"{where}: the host name does not resolve") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailableError(f"{where}: {exc!r}") from exc
        except vmodl.MethodFault as exc:
            raise SourceError(f"{where}: {_msg(exc)}") from exc

    def _call(self, fn: Callable[[], T], what: str) -> T:
        """One vSphere call: logged in again once if the session expired, every fault put in
        our words."""
        for attempt in (1, 2):
            try:
                return fn()
            except vim.fault.NotAuthenticated as exc:
                if attempt == 2:
                    raise SourceAuthError(f"{what}: the session is not authenticated") from exc
                log.info("the vSphere session expired; logging in again")
                self._login()
            except vmodl.MethodFault as exc:
                raise SourceError(f"{what}: {_msg(exc)}") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise SourceUnavailableError(f"{what}: {exc!r}") from exc
        raise AssertionError("unreachable")

    @property
    def is_vcenter(self) -> bool:
        return bool(self._si.content.about.apiType == "VirtualCenter")

    def close(self) -> None:
        if self._si is not None:
            try:
                Disconnect(self._si)  # type: ignore[no-untyped-call]
            except (ImporterError, OSError, http.client.HTTPException, vmodl.MethodFault) as exc:
                log.debug("vSphere logout failed: %s", exc)
            self._si = None

    # ------------------------------------------------------------------ inventory

    def find_vm(self, uuid: str) -> Any:
        def find() -> Any:
            content = self._si.content
            datacenters = [e for e in content.rootFolder.childEntity
                           if isinstance(e, vim.Datacenter)]
            for instance in (True, False):
                for dc in datacenters:
                    vm = content.searchIndex.FindByUuid(datacenter=dc, uuid=uuid, vmSearch=True,
                                                        instanceUuid=instance)
                    if vm is not None:
                        return vm
            return None

        vm = self._call(find, f"looking up VM {uuid}")
        if vm is None:
            raise SourceNotFoundError(f"unable to locate VM in any datacenter: no VM has the "
                                      f"instance or BIOS UUID {uuid}")
        log.info("VM %s (%s) is %s", vm.name, vm._moId, vm.runtime.powerState)
        return vm

    def find_disk(self, vm: Any, backing_file: str) -> Any:
        def find() -> Any:
            for disk in _disks(vm.config.hardware.device):
                if disk.backing.fileName == backing_file:
                    return disk
            roots = vm.snapshot.rootSnapshotList if vm.snapshot else []
            for tree in _walk(roots):
                for disk in _disks(tree.snapshot.config.hardware.device):
                    if disk.backing.fileName == backing_file:
                        return disk
            if roots:
                for disk in _disks(roots[0].snapshot.config.hardware.device):
                    backing, depth = disk.backing, 0
                    while backing is not None and depth < MAX_CHAIN:
                        if backing.fileName == backing_file:
                            return disk
                        backing, depth = getattr(backing, "parent", None), depth + 1
            return None

        disk = self._call(find, f"looking up disk {backing_file}")
        if disk is None:
            raise SourceNotFoundError(f"disk {backing_file} not found on VM {vm.name}: not in its "
                                      "hardware, its snapshots or their backing chains")
        return disk

    def find_snapshot(self, vm: Any, name: str) -> Any:
        def find() -> Any:
            roots = vm.snapshot.rootSnapshotList if vm.snapshot else []
            trees = list(_walk(roots))
            by_id = [t for t in trees if t.snapshot._moId == name]
            by_name = [t for t in trees if t.name == name]
            found = by_id or by_name
            if len(found) > 1:
                raise SourceError(f"{len(found)} snapshots of VM {vm.name} are named {name!r}; "
                                  "name the checkpoint by its id (snapshot-NN) instead")
            return found[0].snapshot if found else None

        snapshot = self._call(find, f"looking up snapshot {name}")
        if snapshot is None:
            raise SourceNotFoundError(f"snapshot {name} not found on VM {vm.name}")
        return snapshot

    def snapshot_disk(self, snapshot: Any, disk: Any) -> Any:
        """The snapshot's copy of `disk`: same disk object id (or device key where vSphere gives
        no ids)."""
        def find() -> Any:
            for d in _disks(snapshot.config.hardware.device):
                if disk.diskObjectId and d.diskObjectId == disk.diskObjectId:
                    return d
                if not disk.diskObjectId and d.key == disk.key:
                    return d
            return None

        found = self._call(find, "looking up the disk in the snapshot")
        if found is None:
            raise SourceNotFoundError(f"Could not find matching disk in snapshot "
                                      f"{snapshot._moId}: disk {disk.backing.fileName} is not in it")
        return found

    def changed_areas(self, vm: Any, snapshot: Any, disk: Any, change_id: str
                      ) -> Iterator[tuple[int, int]]:
        """(start, length) of every area changed since `change_id` up to `snapshot`, page after
        page until vSphere returns none or the disk's end is reached."""
        capacity = int(disk.capacityInBytes or (disk.capacityInKB or 0) * 1024)
        offset, pages = 0, 0
        while True:
            info = self._call(lambda at=offset: vm.QueryChangedDiskAreas(  # type: ignore[misc]
                snapshot=snapshot, deviceKey=disk.key, startOffset=at, changeId=change_id),
                f"Failed to query changed areas at offset {offset}")
            areas = list(info.changedArea or [])
            log.info("%d changed areas reported at offset %d with data length %d", len(areas),
                     info.startOffset, info.length)
            if not areas:
                break
            pages += 1
            for a in areas:
                yield int(a.start), int(a.length)
            following = int(info.startOffset) + int(info.length)
            if following <= offset:
                raise SourceError(f"vSphere's changed areas do not advance past offset {offset}")
            offset = following
            if capacity and offset >= capacity:
                break
        log.info("changed areas: %d page(s) of areas", pages)


def _disks(devices: Any) -> Iterator[Any]:
    for d in devices or []:
        if isinstance(d, vim.vm.device.VirtualDisk):
            yield d


def _walk(trees: Any) -> Iterator[Any]:
    for t in trees or []:
        yield t
        yield from _walk(t.childSnapshotList)


def _msg(fault: Exception) -> str:
    return str(getattr(fault, "msg", "") or type(fault).__name__)


def _colons(hexdigest: str) -> str:
    h = hexdigest.upper()
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))
