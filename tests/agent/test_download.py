"""Template downloads (volstack/agent/download.py) from a real local HTTP server (tests/httpserver.py) into
real directory pools, with images made by qemu-img and compressed by the real tools. The agent command
and the NFS pool target are in test_download_agent.py."""
import bz2
import hashlib
import os
import subprocess

import pytest

from volstack.agent import download, images, metalink, unpack
from volstack.agent.errors import InvalidArgument, Unavailable

from httpserver import FileServer, closed_port_url

MiB = 1 << 20
LOCAL = download.Policy(allowed_cidrs=("127.0.0.0/8",))


@pytest.fixture
def http():
    with FileServer() as srv:
        yield srv


@pytest.fixture
def dpool(tmp_path):
    d = tmp_path / "pool"
    d.mkdir()
    return images.DirectoryPool({"uuid": "pool-1", "path": str(d)}, "host1")


def digest(data: bytes, alg: str = "sha256") -> str:
    return hashlib.new(alg, data).hexdigest()


def qcow2(tmp_path, name="img.qcow2", mib=2, backing=None) -> bytes:
    """A real qcow2 with `mib` MiB of random data (qemu-img convert from a random raw file)."""
    raw, out = tmp_path / f"{name}.raw", tmp_path / name
    raw.write_bytes(os.urandom(mib * MiB))
    if backing:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, "-u", str(out),
                        f"{mib}M"], check=True)
    else:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out.read_bytes()


def iso_bytes(mib=1) -> bytes:
    """Bytes with an ISO 9660 primary volume descriptor at sector 16 (what the ISO check looks for)."""
    data = bytearray(os.urandom(mib * MiB))
    data[0x8000:0x8007] = b"\x01CD001\x01"
    return bytes(data)


def listing(pool) -> list:
    return sorted(os.listdir(pool.root))


# ---- checksums


@pytest.mark.parametrize("alg,label", [("md5", "MD5"), ("sha1", "SHA-1"), ("sha224", "SHA-224"),
                                       ("sha256", "SHA-256"), ("sha384", "SHA-384"), ("sha512", "SHA-512")])
def test_parse_checksum_forms(alg, label):
    hexd = digest(b"x", alg)
    assert unpack.parse_checksum(f"{{{label}}}{hexd}") == (alg, hexd)
    assert unpack.parse_checksum(f"{{{label}}}{hexd.upper()}") == (alg, hexd)
    assert unpack.parse_checksum(hexd) == (alg, hexd)            # bare: the length picks the algorithm
    assert unpack.parse_checksum("{}" + hexd) == (alg, hexd)
    assert unpack.label(alg, hexd) == f"{{{label}}}{hexd}"


def test_parse_checksum_refusals():
    assert unpack.parse_checksum(None) is None and unpack.parse_checksum("  ") is None
    with pytest.raises(InvalidArgument, match="SHA-256 checksum has 64 hex digits, this one has 32"):
        unpack.parse_checksum("{SHA-256}" + digest(b"x", "md5"))
    with pytest.raises(InvalidArgument, match="algorithm 'CRC32' is not supported"):
        unpack.parse_checksum("{CRC32}abcd")
    with pytest.raises(InvalidArgument, match="33 hex digits matches no algorithm"):
        unpack.parse_checksum("a" * 33)
    with pytest.raises(InvalidArgument, match="is not"):
        unpack.parse_checksum("{MD5}not-hex")


@pytest.mark.parametrize("form", ["{MD5}", "{SHA-1}", "{SHA-256}", "{SHA-384}", "{SHA-512}", "bare-md5",
                                  "bare-sha256"])
def test_download_verifies_every_checksum_form(http, dpool, form):
    data = os.urandom(MiB + 512)
    alg = {"{MD5}": "md5", "{SHA-1}": "sha1", "{SHA-256}": "sha256", "{SHA-384}": "sha384", "{SHA-512}": "sha512",
           "bare-md5": "md5", "bare-sha256": "sha256"}[form]
    checksum = (form if form.startswith("{") else "") + digest(data, alg)
    url = http.add("/disk.raw", data=data)
    r = download.download(dpool, "t1", "RAW", urls=[url], checksum=checksum, policy=LOCAL)
    assert r["verified"] and r["checksum"] == unpack.label(alg, digest(data, alg))
    assert (r["format"], r["size"], r["downloaded"], r["attempts"]) == ("raw", len(data), len(data), 1)
    assert (dpool.root and open(dpool.target("t1"), "rb").read()) == data
    assert listing(dpool) == ["t1"]
    assert r["validators"]["etag"] and r["validators"]["last_modified"] and r["validators"]["size"] == len(data)


def test_checksum_mismatch_retries_three_times_then_names_both_digests(http, dpool):
    data = os.urandom(MiB)
    url = http.add("/bad.raw", data=data, fail="corrupt")
    with pytest.raises(InvalidArgument) as e:
        download.download(dpool, "t1", "RAW", urls=[url], checksum="{SHA-256}" + digest(data), policy=LOCAL)
    text = str(e.value)
    assert "checksum mismatch: expected {SHA-256}" + digest(data) in text and "after 3 attempts" in text
    assert text.count("{SHA-256}") == 4            # the expected digest and the three actual ones
    assert [r[0] for r in http.requests if r[1] == "/bad.raw"] == ["GET"] * 3
    assert listing(dpool) == []


def test_checksum_retry_recovers_from_one_bad_transfer(http, dpool):
    data = os.urandom(MiB)
    url = http.add("/flaky.raw", data=data, fail="corrupt", times=1)
    r = download.download(dpool, "t1", "RAW", urls=[url], checksum=digest(data, "md5"), policy=LOCAL)
    assert r["attempts"] == 2 and open(dpool.target("t1"), "rb").read() == data


# ---- compression


@pytest.mark.parametrize("tool,suffix", [("bzip2", ".bz2"), ("gzip", ".gz"), ("xz", ".xz"), ("zip", ".zip")])
def test_compressed_qcow2(http, dpool, tmp_path, tool, suffix):
    image = qcow2(tmp_path, mib=3)
    src = tmp_path / "img.qcow2"
    if tool == "zip":
        subprocess.run(["zip", "-q", "-j", str(src) + ".zip", str(src)], check=True)
    else:
        subprocess.run([tool, "-k", "-f", str(src)], check=True)
    packed = (tmp_path / f"img.qcow2{suffix}").read_bytes()
    url = http.add(f"/t/img.qcow2{suffix}", data=packed)
    r = download.download(dpool, "t1", "QCOW2", urls=[url], checksum="{SHA-256}" + digest(packed), policy=LOCAL)
    assert r["compression"] == suffix[1:] and r["downloaded"] == len(packed)   # checksum of the bytes as downloaded
    assert open(dpool.target("t1"), "rb").read() == image
    assert (r["format"], r["size"]) == ("qcow2", 3 * MiB)
    assert listing(dpool) == ["t1"]


def test_zip_stored_member(http, dpool, tmp_path):
    image = qcow2(tmp_path)
    subprocess.run(["zip", "-q", "-0", "-j", str(tmp_path / "s.zip"), str(tmp_path / "img.qcow2")], check=True)
    packed = (tmp_path / "s.zip").read_bytes()
    r = download.download(dpool, "t1", "QCOW2", urls=[http.add("/s.zip", data=packed)], checksum=digest(packed),
                          policy=LOCAL)
    assert r["compression"] == "zip" and open(dpool.target("t1"), "rb").read() == image


def test_segmented_download_unpacks_in_order_while_segments_arrive(http, dpool, tmp_path):
    image = qcow2(tmp_path, mib=12)
    subprocess.run(["xz", "-0", "-k", "-f", str(tmp_path / "img.qcow2")], check=True)
    packed = (tmp_path / "img.qcow2.xz").read_bytes()
    assert len(packed) > download.MIN_SEGMENTED
    urls = [http.add(f"/s{i}/img.qcow2.xz", data=packed, rate=32 * MiB) for i in range(3)]
    seen = []
    r = download.download(dpool, "t1", "QCOW2", urls=urls, checksum="{SHA-512}" + digest(packed, "sha512"),
                          policy=LOCAL, progress=lambda percent, done: seen.append((percent, done)))
    assert r["segmented"] and r["compression"] == "xz" and all(r["mirrors"][u] > 0 for u in urls)
    assert open(dpool.target("t1"), "rb").read() == image and listing(dpool) == ["t1"]
    assert seen[-1] == (100, len(packed)) and any(0 < p < 90 for p, _ in seen)


def test_compression_found_by_magic_bytes_and_concatenated_streams(http, dpool):
    data = iso_bytes()
    packed = bz2.compress(data[:MiB // 2]) + bz2.compress(data[MiB // 2:])      # like pbzip2: two streams
    r = download.download(dpool, "iso1", "ISO", urls=[http.add("/download", data=packed) + "?id=7"], policy=LOCAL)
    assert r["compression"] == "bz2" and open(dpool.target("iso1"), "rb").read() == data
    assert r["verified"] is False and r["checksum"] == "{SHA-256}" + digest(packed)
    plain = download.download(dpool, "iso2", "ISO", urls=[http.add("/x.iso", data=data)], policy=LOCAL,
                              compression="none")
    assert plain["compression"] is None and plain["image_format"] == "ISO" and plain["format"] == "raw"


def test_bad_compressed_data_refused(http, dpool, tmp_path):
    with pytest.raises(InvalidArgument, match="names gzip compression but the data is not gzip"):
        download.download(dpool, "t1", "RAW", urls=[http.add("/a.raw.gz", data=os.urandom(MiB))], policy=LOCAL,
                          attempts=1)
    truncated = bz2.compress(os.urandom(MiB))[:-100]
    with pytest.raises(InvalidArgument, match="bzip2 data is truncated"):
        download.download(dpool, "t1", "RAW", urls=[http.add("/b.raw.bz2", data=truncated)], policy=LOCAL,
                          checksum=digest(truncated))
    for i in range(2):
        (tmp_path / f"m{i}").write_bytes(os.urandom(1000))
    subprocess.run(["zip", "-q", "-j", str(tmp_path / "two.zip"), str(tmp_path / "m0"), str(tmp_path / "m1")],
                   check=True)
    two = (tmp_path / "two.zip").read_bytes()
    with pytest.raises(InvalidArgument, match="zip archive has 2 members"):
        download.download(dpool, "t1", "RAW", urls=[http.add("/two.zip", data=two)], policy=LOCAL, checksum=digest(two))
    assert listing(dpool) == []


# ---- what the image is


def test_backing_file_refused_even_when_it_points_nowhere(http, dpool, tmp_path):
    real = tmp_path / "base.raw"
    real.write_bytes(b"\0" * MiB)
    for backing in ("/nonexistent/base.raw", str(real)):
        data = qcow2(tmp_path, "child.qcow2", backing=backing)
        with pytest.raises(InvalidArgument, match=f"has a backing file \\('{backing}'\\)"):
            download.download(dpool, "t1", "QCOW2", urls=[http.add("/child.qcow2", data=data)], policy=LOCAL)
        assert listing(dpool) == []


def test_declared_format_must_match_the_bytes(http, dpool, tmp_path):
    raw, image = os.urandom(MiB), qcow2(tmp_path)
    with pytest.raises(InvalidArgument, match="registered as QCOW2 but it is raw data"):
        download.download(dpool, "t1", "QCOW2", urls=[http.add("/raw", data=raw)], policy=LOCAL)
    with pytest.raises(InvalidArgument, match="registered as RAW but it is a qcow2 image; register it as QCOW2"):
        download.download(dpool, "t1", "RAW", urls=[http.add("/q", data=image)], policy=LOCAL)
    with pytest.raises(InvalidArgument, match="registered as ISO but has no ISO 9660"):
        download.download(dpool, "t1", "ISO", urls=[http.add("/notiso", data=raw)], policy=LOCAL)
    with pytest.raises(InvalidArgument, match="'VHD' is not a KVM template format"):
        download.download(dpool, "t1", "VHD", urls=[http.add("/raw", data=raw)], policy=LOCAL)
    assert listing(dpool) == []
    r = download.download(dpool, "t1", "qcow2", urls=[http.add("/q", data=image)], policy=LOCAL)
    assert (r["format"], r["size"]) == ("qcow2", 2 * MiB)


# ---- sources


@pytest.mark.parametrize("url,why", [
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("ftp://127.0.0.1/x", "scheme 'ftp' is not allowed"),
    ("nfs://127.0.0.1/x", "scheme 'nfs' is not allowed"),
    ("http://169.254.169.254/latest/meta-data", "link-local address 169.254.169.254"),
    ("http://[fe80::1]/x", "link-local address fe80::1"),
    ("http://[::ffff:169.254.1.1]/x", "link-local address 169.254.1.1"),
])
def test_refused_urls(dpool, url, why):
    with pytest.raises(InvalidArgument, match=why):
        download.download(dpool, "t1", "RAW", urls=[url], policy=LOCAL)
    assert listing(dpool) == []


def test_internal_addresses_need_the_management_servers_allowance(http, dpool):
    url = http.add("/x.raw", data=os.urandom(1024))
    with pytest.raises(InvalidArgument, match="internal address 127.0.0.1, which is not in the allowed internal "
                                              "networks \\(10.0.0.0/8, 172.16.0.0/12"):
        download.download(dpool, "t1", "RAW", urls=[url])          # default: private ranges, not loopback
    policy = download.Policy(allowed_cidrs=["127.0.0.1/32"])
    assert download.download(dpool, "t1", "RAW", urls=[url], policy=policy)["size"] == 1024
    link_local_allowed = download.Policy(allowed_cidrs=["169.254.0.0/16"])       # never, whatever is allowed
    with pytest.raises(InvalidArgument, match="link-local"):
        link_local_allowed.check("http://169.254.169.254/")


def test_redirect_targets_are_checked(dpool):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(Unavailable, match="169.254.169.254 is the link-local address"):
            download.download(dpool, "t1", "RAW", urls=[f"http://127.0.0.1:{srv.server_address[1]}/r"], policy=LOCAL)
    finally:
        srv.shutdown()
        srv.server_close()
    assert listing(dpool) == []


def test_unreachable_sources_listed_and_nothing_left(http, dpool):
    dead = closed_port_url()
    with pytest.raises(Unavailable) as e:
        download.download(dpool, "t1", "RAW", urls=[dead, http.url("/missing.raw")], policy=LOCAL)
    assert "could not download from any source" in str(e.value) and "HTTP 404" in str(e.value)
    assert dead in str(e.value)
    assert listing(dpool) == []


def test_connection_reset_mid_body_resumes_with_range(http, dpool):
    data = os.urandom(3 * MiB)
    url = http.add("/r.raw", data=data, fail="cut", after=MiB + 17, times=1)
    seen = []
    r = download.download(dpool, "t1", "RAW", urls=[url], checksum=digest(data), policy=LOCAL,
                          progress=lambda percent, done: seen.append((percent, done)))
    assert open(dpool.target("t1"), "rb").read() == data and r["attempts"] == 1
    assert ("GET", "/r.raw", f"bytes={MiB + 17}-", 206) in http.requests
    percents = [p for p, _ in seen]
    assert percents == sorted(percents) and percents[-1] >= 95 and seen[-1][1] == len(data)


def _metalink(urls_prio, data=None, size=None, v3=False) -> bytes:
    if v3:
        res = "".join(f'<url type="http" preference="{101 - p}" location="{loc}">{u}</url>' for u, p, loc in urls_prio)
        return (f'<?xml version="1.0"?><metalink version="3.0" xmlns="http://www.metalinker.org/"><files>'
                f'<file name="img"><size>{size}</size><verification><hash type="sha256">{digest(data)}</hash>'
                f'</verification><resources>{res}</resources></file></files></metalink>').encode()
    body = "".join(f'<url priority="{p}" location="{loc}">{u}</url>' for u, p, loc in urls_prio)
    hashes = f'<hash type="sha-256">{digest(data)}</hash><hash type="md5">{digest(data, "md5")}</hash>' if data else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><metalink xmlns="urn:ietf:params:xml:ns:metalink">'
            f'<file name="img.raw"><size>{size}</size>{hashes}{body}</file></metalink>').encode()


def test_metalink_parsing_and_order():
    ml = metalink.parse(_metalink([("http://a/x", 2, "us"), ("http://b/x", 1, "de"), ("http://c/x", 3, "de")],
                                  b"abc", 3))
    assert ml.size == 3 and ml.hashes == {"sha256": digest(b"abc"), "md5": digest(b"abc", "md5")}
    assert [m.url for m in metalink.order(ml.mirrors)] == ["http://b/x", "http://a/x", "http://c/x"]
    assert [m.url for m in metalink.order(ml.mirrors, "us")] == ["http://a/x", "http://b/x", "http://c/x"]
    v3 = metalink.parse(_metalink([("http://a/x", 50, "us"), ("http://b/x", 1, "de")], b"abc", 3, v3=True))
    assert [m.url for m in metalink.order(v3.mirrors)] == ["http://b/x", "http://a/x"] and v3.hashes["sha256"]
    with pytest.raises(InvalidArgument, match="DOCTYPE"):
        metalink.parse(b'<!DOCTYPE x [<!ENTITY a "b">]><metalink/>')
    with pytest.raises(InvalidArgument, match="no <file>"):
        metalink.parse(b'<metalink xmlns="urn:ietf:params:xml:ns:metalink"/>')


@pytest.mark.parametrize("v3", [False, True])
def test_metalink_three_mirrors_one_dead_one_corrupt(http, dpool, v3):
    data = os.urandom(8 * MiB)
    dead = closed_port_url("/img.raw")
    bad = http.add("/bad/img.raw", data=data, fail="corrupt")
    good = http.add("/good/img.raw", data=data)
    ml = http.add("/img.metalink", data=_metalink([(dead, 1, "us"), (bad, 2, "us"), (good, 3, "de")], data,
                                                  len(data), v3))
    r = download.download(dpool, "t1", "RAW", metalink_url=ml, policy=LOCAL)     # checksum from the metalink
    assert open(dpool.target("t1"), "rb").read() == data and listing(dpool) == ["t1"]
    assert r["verified"] and r["checksum"] == "{SHA-256}" + digest(data)
    # attempt 1: segments from both live mirrors (bad bytes); then one mirror at a time in priority order:
    # attempt 2 from the corrupt one (it is tried last from then on), attempt 3 from the good one
    assert r["attempts"] == 3 and r["mirrors"] == {good: len(data)}
    assert any(req[1] == "/bad/img.raw" and req[2] and req[2] != "bytes=0-0" for req in http.requests)


def test_segmented_fetch_spreads_over_mirrors_and_hands_over_a_failed_segment(http, dpool):
    data = os.urandom(12 * MiB)
    urls = [http.add(f"/m{i}/img.raw", data=data, rate=24 * MiB) for i in range(2)]
    urls.append(http.add("/m2/img.raw", data=data, fail="cut", after=300 * 1024))   # fails every segment
    r = download.download(dpool, "t1", "RAW", urls=urls, checksum=digest(data), policy=LOCAL)
    assert open(dpool.target("t1"), "rb").read() == data and r["segmented"] and r["attempts"] == 1
    assert r["mirrors"][urls[0]] > 0 and r["mirrors"][urls[1]] > 0 and r["mirrors"][urls[2]] > 0   # partial bytes kept
    assert sum(r["mirrors"].values()) == len(data)
    ranges = [q for q in http.requests if q[2] and q[2] != "bytes=0-0"]
    assert len({q[1] for q in ranges}) == 3


def test_no_range_support_falls_back_to_one_stream(http, dpool):
    data = os.urandom(6 * MiB)
    urls = [http.add(f"/n{i}/img.raw", data=data, ranges=False) for i in range(2)]
    r = download.download(dpool, "t1", "RAW", urls=urls, checksum=digest(data), policy=LOCAL)
    assert not r["segmented"] and r["mirrors"] == {urls[0]: len(data)}


def test_connection_reset_is_retried_on_the_same_mirror(http, dpool):
    data = os.urandom(2 * MiB)
    url = http.add("/rst.raw", data=data, fail="reset", after=MiB, times=1)
    r = download.download(dpool, "t1", "RAW", urls=[url], checksum=digest(data), policy=LOCAL)
    assert open(dpool.target("t1"), "rb").read() == data and r["attempts"] == 1
    assert len([q for q in http.requests if q[1] == "/rst.raw"]) == 2


def test_changed_source_detected(http, dpool):
    data = os.urandom(MiB)
    url = http.add("/c.raw", data=data)
    r = download.download(dpool, "t1", "RAW", urls=[url], policy=LOCAL)
    assert download.check_source([url], r["validators"], LOCAL)["changed"] is False
    http.add("/c.raw", data=os.urandom(MiB))        # same size, new content: the ETag tells
    now = download.check_source([url], r["validators"], LOCAL)
    assert now["changed"] is True and now["reason"].startswith("ETag changed from")
    assert [q[0] for q in http.requests[-2:]] == ["HEAD", "HEAD"]
    other = http.add("/mirror/c.raw", data=os.urandom(2 * MiB))
    moved = download.check_source([other], r["validators"], LOCAL)       # another URL: only the size counts
    assert moved["changed"] is True and moved["reason"] == f"size changed from {MiB} to {2 * MiB}"
    assert download.check_source([url], {}, LOCAL)["changed"] is None


def test_existing_name_never_overwritten(http, dpool):
    open(dpool.target("t1"), "wb").write(b"mine")
    with pytest.raises(InvalidArgument, match="t1 already exists in pool pool-1"):
        download.download(dpool, "t1", "RAW", urls=[http.add("/x", data=b"x" * 100)], policy=LOCAL)
    assert open(dpool.target("t1"), "rb").read() == b"mine" and listing(dpool) == ["t1"]
