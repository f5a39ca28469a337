"""The agent's template commands: downloads into a pool (with their records, for idempotence and for
recovery after a restart), source checks, and the CA certificates a host trusts for https sources.
A mixin of agent/commands.py's Agent, which holds images (hold) and opens pools (pool)."""
import json
import os
import re
import ssl
import tempfile

from volstack.agent import download, images
from volstack.agent.args import arg
from volstack.agent.errors import InvalidArgument


class TemplateCommands:
    # ---- templates
    # template_download args: pool, name, format (QCOW2|RAW|ISO), urls (list) or metalink (URL), checksum
    # ({ALG}hex or bare hex, optional), validators (optional: recorded earlier; the result says whether the
    # source changed since), options {allowed_cidrs, headers, timeout, ca_file, location, attempts,
    # segmented, compression}. A record per download in <state>/downloads makes a repeated identical download
    # return the first result; a file under the final name exists only after it was verified.

    def state_dir(self, kind: str) -> str:
        """<state>/<kind>: downloads, uploads, certs…"""
        base = getattr(self.hv, "root", None) or getattr(self.hv, "path", None)   # <state>/vms, <state>/x.json
        return os.path.join(os.path.dirname(base) if base else tempfile.gettempdir(), kind)

    def _downloads_dir(self) -> str:
        return self.state_dir("downloads")

    def _download_options(self, args) -> tuple:
        opts = arg(args, "options", dict, {})
        cidrs = opts.get("allowed_cidrs", download.fetch.PRIVATE)
        headers = opts.get("headers") or {}
        if not isinstance(cidrs, (list, tuple)) or not isinstance(headers, dict):
            raise InvalidArgument("options.allowed_cidrs must be a list of CIDRs and options.headers an object")
        timeout = opts.get("timeout", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidArgument("options.timeout must be a positive number of seconds")
        ca_file = opts.get("ca_file")      # PEM certificates to trust for https sources, besides the system's
        if ca_file is not None and (not isinstance(ca_file, str) or not os.path.isfile(ca_file)):
            raise InvalidArgument(f"options.ca_file {ca_file!r} is not a file on host {self.hostname}")
        context = None
        trusted = self._certificates()
        if ca_file or trusted:
            context = ssl.create_default_context()
            for path in ([ca_file] if ca_file else []) + trusted:
                context.load_verify_locations(cafile=path)
        return download.Policy(allowed_cidrs=tuple(cidrs), timeout=float(timeout), headers=headers,
                               context=context), opts

    # Direct-download certificates (uploadTemplateDirectDownloadCertificate): CA certificates this host trusts
    # for https sources besides the system's, one PEM file per alias in <state>/certs.

    def _certs_dir(self) -> str:
        return self.state_dir("certs")

    def _certificates(self) -> list[str]:
        d = self._certs_dir()
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".pem")) if os.path.isdir(d) else []

    def _cert_path(self, alias) -> str:
        if not isinstance(alias, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", alias):
            raise InvalidArgument(f"invalid certificate alias {alias!r}: letters, digits and . _ -")
        return os.path.join(self._certs_dir(), f"{alias}.pem")

    def cmd_certificate_install(self, args, progress):
        path, pem = self._cert_path(arg(args, "alias")), arg(args, "certificate")
        try:
            ssl.create_default_context().load_verify_locations(cadata=pem)
        except (ssl.SSLError, ValueError) as e:
            raise InvalidArgument(f"not a PEM certificate: {e}") from None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(pem)
        os.replace(tmp, path)
        return {"installed": True}

    def cmd_certificate_remove(self, args, progress):
        try:
            os.unlink(self._cert_path(arg(args, "alias")))
            return {"removed": True}
        except FileNotFoundError:
            return {"removed": False}

    def _download_record(self, pool, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", str(pool.uuid))
        return os.path.join(self._downloads_dir(), f"{safe}+{name}.json")

    @staticmethod
    def _download_request(args) -> dict:
        return {"urls": args.get("urls"), "metalink": args.get("metalink"), "format": str(args.get("format")).upper(),
                "checksum": args.get("checksum")}

    def _template_done(self, pool, name: str, args) -> dict | None:
        """The result of a finished download of the same request into pool/name, else None."""
        try:
            with open(self._download_record(pool, name)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            return None
        if rec.get("request") != self._download_request(args) or not pool.exists(name):
            return None
        if rec.get("result"):
            return dict(rec["result"], reused=True)
        # finished (the final name appears only after verification) but stopped before the result was saved
        fmt = download.unpack.KVM_FORMATS[rec["request"]["format"]]
        fmt = fmt if fmt in pool.formats else pool.formats[0]          # a qcow2 template lands raw on RBD
        have = images.info(pool, name, fmt)
        parsed = download.unpack.parse_checksum(rec["request"]["checksum"])
        return {"path": name, "format": fmt, "image_format": rec["request"]["format"], "size": have["size"],
                "physical_size": have["physical_size"], "checksum": parsed and download.unpack.label(*parsed),
                "verified": parsed is not None, "validators": None, "reused": True}

    def cmd_template_download(self, args, progress):
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        fmt, checksum = arg(args, "format"), arg(args, "checksum", str, None)
        urls, metalink_url = args.get("urls"), arg(args, "metalink", str, None)
        known = arg(args, "validators", dict, None)
        policy, opts = self._download_options(args)
        record = self._download_record(pool, name)
        with self.hold(pool, name, "being downloaded"):
            result = self._template_done(pool, name, args)
            if result is None:
                if pool.exists(name):
                    raise InvalidArgument(f"{name} already exists in pool {pool.uuid} and is not the result of this "
                                          "download; delete it or download under another name")
                os.makedirs(os.path.dirname(record), exist_ok=True)
                with open(record, "w") as f:
                    json.dump({"request": self._download_request(args)}, f)
                try:
                    result = download.download(
                        pool, name, fmt, urls=urls, metalink_url=metalink_url, checksum=checksum, policy=policy,
                        location=opts.get("location"), work_dir=self._downloads_dir(),
                        progress=lambda percent, done: progress(percent), attempts=opts.get("attempts", 3),
                        segmented=opts.get("segmented", True), compression=opts.get("compression", "auto"),
                        max_size=opts.get("max_size"), limit_setting=opts.get("limit_setting"))
                except BaseException:
                    os.unlink(record)
                    raise
                with open(record + ".new", "w") as f:
                    json.dump({"request": self._download_request(args), "result": result}, f)
                os.replace(record + ".new", record)
                result = dict(result, reused=False)
            if known is not None:
                result["changed"], result["change_reason"] = download.compare(known, result.get("validators") or {})
            return result

    def cmd_template_verify(self, args, progress):
        """Fetch and hash the source without storing it (a direct-download template's registration check)."""
        policy, opts = self._download_options(args)
        return download.verify(args.get("urls"), arg(args, "metalink", str, None), arg(args, "checksum", str, None),
                               policy, opts.get("location"), lambda percent, done: progress(percent),
                               opts.get("attempts", 3))

    def cmd_template_check_source(self, args, progress):
        policy, _ = self._download_options(args)
        return download.check_source(args.get("urls"), arg(args, "validators", dict, {}), policy,
                                     arg(args, "metalink", str, None))

    def _template_recover(self, args) -> dict | None:
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        partial = download.cleanup(pool, name, self._downloads_dir())
        done = None if partial else self._template_done(pool, name, args)
        if done is None and not pool.exists(name):
            try:
                os.unlink(self._download_record(pool, name))
            except FileNotFoundError:
                pass
        return done
