"""pairkit's key server: the trusted third party of method ``ttp`` and the CPNS server.

Two enrolled devices that both state an intent to pair with each other get one fresh key from it
(method ``ttp``, docs/protocol.md), and a gateway registers personal networks of factory-keyed
devices with it (CPNS).  Devices reach it over TLS 1.3 and pin its CA certificate.  It is a
server, not part of a device: devices use its client side, :mod:`pairkit.ttp`.

* :mod:`pairkit.keyserver.server`: the asyncio TLS server (:class:`~.server.TtpServer`) and
  :func:`~.server.serve`, which runs one from a :class:`~.server.ServeConfig`;
* :mod:`pairkit.keyserver.store`: its SQLite database (devices, intents, PN inventories; keys
  sealed at rest);
* :mod:`pairkit.keyserver.certs`: its directory (CA, TLS certificate, sealing key, token).

Run it::

    pairkit ttp init --dir ./ttp --host ttp.example.org       # once: CA, certificate, database
    python -m pairkit.keyserver --dir ./ttp --listen 0.0.0.0:8443
    pairkit ttp serve --dir ./ttp --listen 0.0.0.0:8443        # the same server, from the CLI

It imports nothing from :mod:`pairkit.cli` and no click (tests/test_layers.py checks this); it
reports through :mod:`logging` (the ``pairkit.keyserver`` loggers).
"""
