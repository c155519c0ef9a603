"""Archive safety (path traversal, links, absolute paths, bombs), upload size limits, tokens over real HTTP."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import hubkit
import pytest

from adapterhub.hub.archive import ArchiveLimits, extract_archive, pack_directory_bytes
from adapterhub.hub.errors import UnsafeArchiveError

LIMITS = ArchiveLimits(max_files=8, max_file_bytes=2 * 1024 * 1024, max_total_bytes=3 * 1024 * 1024)


def _tar(entries: list[tarfile.TarInfo], payloads: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for info in entries:
            data = (payloads or {}).get(info.name)
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, dict[str, bytes]]:
    return tarfile.TarInfo(name), {name: data}


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip(files: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _check_refused(tmp_path: Path, data: bytes, fragment: str) -> None:
    archive = tmp_path / "bad.bin"
    archive.write_bytes(data)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=fragment):
        extract_archive(archive, dest, LIMITS)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../escaped", r"outside"),
        ("a/../../escaped", r"outside"),
        ("/tmp/escaped", r"absolute"),
        ("C:/escaped", r"absolute"),
        ("a\\..\\escaped", r"backslash"),
        ("sub/dir/file", r"subfolder"),
    ],
)
def test_tar_bad_names(tmp_path, name, fragment):
    info, payload = _file(name)
    _check_refused(tmp_path, _tar([info], payload), fragment)


def test_tar_links_and_devices(tmp_path):
    _check_refused(tmp_path, _tar([_link("adapter.safetensors", "/etc/passwd")]), "link")
    _check_refused(tmp_path, _tar([_link("adapter.safetensors", "other", tarfile.LNKTYPE)]), "link")
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    _check_refused(tmp_path, _tar([fifo]), "special")


def test_tar_bomb_and_counts(tmp_path):
    big, payload = _file("adapter.safetensors", b"\0" * (4 * 1024 * 1024))
    _check_refused(tmp_path, _tar([big], payload), "larger than")
    entries, payloads = [], {}
    for i in range(3):  # each under the per-file cap, together over the total cap
        info, p = _file(f"f{i}.bin", b"\0" * (1536 * 1024))
        entries.append(info)
        payloads.update(p)
    _check_refused(tmp_path, _tar(entries, payloads), "unpacks to more than")
    many = [_file(f"f{i}")[0] for i in range(20)]
    _check_refused(tmp_path, _tar(many, {f"f{i}": b"x" for i in range(20)}), "entries")


def test_tar_size_header_lie_is_caught(tmp_path):
    """A header may claim a small size; the copy is capped by bytes actually written, not by the header."""
    info, payload = _file("a.bin", b"\0" * (3 * 1024 * 1024))
    data = _tar([info], payload)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(UnsafeArchiveError):
        extract_archive(
            archive,
            tmp_path / "out",
            ArchiveLimits(max_files=8, max_file_bytes=1024 * 1024, max_total_bytes=8 * 1024 * 1024),
        )


def test_zip_bomb_symlink_traversal(tmp_path):
    _check_refused(
        tmp_path,
        _zip({"adapter.safetensors": b"\0" * (2 * 1024 * 1024 - 1)} | {"b": b"\0" * 1_500_000}),
        "compression ratio|unpacks to more",
    )
    _check_refused(tmp_path, _zip({"../escaped": b"x"}), "outside")
    _check_refused(tmp_path, _zip({"/escaped": b"x"}), "absolute")
    _check_refused(tmp_path, _zip({"ok": b"x"}, symlink="link"), "link")
    _check_refused(tmp_path, b"not an archive at all", "neither")
    _check_refused(tmp_path, b"\x1f\x8b\x08\x00garbage", "corrupted")


def test_zip_ratio_limit(tmp_path):
    _check_refused(tmp_path, _zip({"adapter.safetensors": b"\0" * (1536 * 1024)}), "compression ratio")


def test_pack_is_reproducible(tmp_path):
    d = hubkit.make_adapter_dir(tmp_path / "a")
    first = pack_directory_bytes(d)
    time.sleep(0.01)
    (d / "adapter_config.json").touch()
    assert pack_directory_bytes(d) == first
    out = tmp_path / "x"
    (tmp_path / "p.tar.gz").write_bytes(first)
    assert extract_archive(tmp_path / "p.tar.gz", out) == ["adapter.safetensors", "adapter_config.json"]
    (d / "link").symlink_to(d / "adapter_config.json")
    with pytest.raises(UnsafeArchiveError):
        pack_directory_bytes(d)


def test_unsafe_uploads_rejected_by_server(hub_env):
    d = hub_env.adapter_dir()
    good = {p.name: p.read_bytes() for p in d.iterdir()}
    traversal = [tarfile.TarInfo(n) for n in good] + [tarfile.TarInfo("../../escaped")]
    payloads = dict(good) | {"../../escaped": b"owned"}
    for data in (
        _tar(traversal, payloads),
        _tar([_link("adapter.safetensors", "/etc/passwd")]),
        _zip(good | {"bomb.bin": b"\0" * (20 * 1024 * 1024)}),
        _zip(good, symlink="x"),
    ):
        r = hub_env.upload("alice", "evil", archive=data)
        assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_archive", r.text
    assert not (hub_env.tmp.parent / "escaped").exists()
    assert hub_env.client.get("/api/v1/stats").json()["versions"] == 0


def test_oversized_upload_rejected_by_content_length(hub_env):
    r = hub_env.upload("alice", "big", archive=b"\x1f\x8b" + b"\0" * (5 * 1024 * 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"


def _raw_request(port: int, head: str, body_parts: list[bytes], wait: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(head.encode())
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks) and b"}" in data:
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def test_oversized_upload_rejected_early_over_http(sqlite_env):
    """A 1 GiB Content-Length is refused from the headers alone, before any body byte is sent; a chunked upload
    without Content-Length is cut off as soon as it passes the limit."""
    with hubkit.ThreadServer(sqlite_env.app) as server:
        token = sqlite_env.tokens["alice"]
        head = (
            f"POST /api/v1/adapters/alice/big/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1073741824\r\n\r\n"
        )
        t0 = time.monotonic()
        reply = _raw_request(server.port, head, [])
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"too_large" in reply and time.monotonic() - t0 < 5
        head = (
            f"POST /api/v1/adapters/alice/big/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        start = b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a"\r\n\r\n'
        chunk = b"\0" * (1024 * 1024)
        parts = [b"%x\r\n%s\r\n" % (len(start), start)] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 6
        reply = _raw_request(server.port, head, parts)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        # a bad token is refused before the body is read
        head = (
            "POST /api/v1/adapters/alice/big/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        )
        reply = _raw_request(server.port, head, [])
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
    assert sqlite_env.client.get("/api/v1/stats").json()["versions"] == 0


def test_garbage_multipart_is_a_client_error(hub_env):
    r = hub_env.client.post(
        "/api/v1/adapters/alice/x/versions",
        headers=hub_env.auth("alice") | {"Content-Type": "multipart/form-data; boundary=zz"},
        content=b"--zz\r\nbroken",
    )
    assert 400 <= r.status_code < 500, r.text
    r = hub_env.client.post(
        "/api/v1/adapters/alice/x/versions", headers=hub_env.auth("alice"), content=json.dumps({"card": {}})
    )
    assert 400 <= r.status_code < 500, r.text
