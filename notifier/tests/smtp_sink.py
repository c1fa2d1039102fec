"""A real SMTP server for the notifier's email tests (aiosmtpd, PyPI).

Usage: smtp_sink.py PORT OUT_FILE [--auth USER PASSWORD] [--starttls CERT KEY | --tls CERT KEY]

Appends each message received as one JSON line (mail_from, rcpt_tos, data, authenticated,
tls: whether the session was encrypted, and tls_version) to OUT_FILE and prints "ready" once
it listens. Recipients `nobody@...` are refused (550).

--auth USER PASSWORD: AUTH PLAIN/LOGIN is required before MAIL; a wrong password gets 535.
--starttls CERT KEY: STARTTLS with that certificate (PEM files) is required before any
  other command, and AUTH is offered and accepted only after it.
--tls CERT KEY: TLS from the first byte (implicit TLS, SMTPS). aiosmtpd does not see that
  the transport is TLS, so AUTH is allowed without STARTTLS there.
Without --starttls or --tls the server speaks plain SMTP on loopback (AUTH allowed in
clear).
"""
import argparse
import json
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out):
        self.out = out

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        # The SSL object of the transport: after STARTTLS and with implicit TLS alike.
        ssl_object = server.transport.get_extra_info("ssl_object")
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.content.decode("utf-8", "replace"),
                "authenticated": session.authenticated,
                "tls": ssl_object is not None,
                "tls_version": ssl_object.version() if ssl_object is not None else None,
            }) + "\n")
        return "250 OK"


def server_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("out")
    p.add_argument("--auth", nargs=2, metavar=("USER", "PASSWORD"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    mode.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    args = p.parse_args()

    kwargs = {}
    if args.auth:
        user, password = args.auth[0].encode(), args.auth[1].encode()

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
            # handled=False: aiosmtpd answers a failure itself (535); the default
            # (handled=True) would leave the client waiting for a reply.
            return AuthResult(success=ok, handled=False)

        kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=bool(args.starttls))
    if args.starttls:
        kwargs.update(tls_context=server_context(*args.starttls), require_starttls=True)
    if args.tls:
        kwargs.update(ssl_context=server_context(*args.tls))
    controller = Controller(Sink(args.out), hostname="127.0.0.1", port=args.port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
