"""``pairkit --help`` as click renders it at 80 columns, kept so that the console script can
answer without importing click (see :mod:`pairkit.cli`).  Written by
``python -m pairkit.cli._help``; tests/test_startup_imports.py fails when it differs from
click's rendering."""

HELP = (
    'Usage: pairkit [OPTIONS] COMMAND [ARGS]...\n'
    '\n'
    '  pairkit pairs two devices over Bluetooth Low Energy (or TCP) and opens a\n'
    '  secure channel.\n'
    '\n'
    '  First steps:\n'
    '    pairkit init --name "Paul\'s laptop"     create this device\'s identity\n'
    '    pairkit host --transport tcp:127.0.0.1:7000 --method pin\n'
    '    pairkit join tcp:127.0.0.1:7000 --method pin --pin 123456   (in another terminal)\n'
    '    pairkit peers                           devices you have paired with\n'
    '\n'
    '  The keystore lives in your user data directory; PAIRKIT_HOME moves it, a\n'
    "  command's --pin-file FILE or PAIRKIT_PIN unlocks it without a prompt (for\n"
    '  scripts).  Without -t, commands use the default transport (config.toml,\n'
    '  PAIRKIT_TRANSPORT, else bumble:usb:0; see whoami).\n'
    '\n'
    'Options:\n'
    '  --version      Show the version and exit.\n'
    '  -v, --verbose  Say more: -v what pairkit does, -vv everything (its libraries\n'
    '                 too).\n'
    '  -q, --quiet    Say nothing on stderr but errors.\n'
    '  --debug        Show tracebacks for errors (for bug reports).\n'
    '  -h, --help     Show this message and exit.\n'
    '\n'
    'Commands:\n'
    '  demo      Run the Paul-and-George scenario in one process, narrated...\n'
    "  discover  List the pairkit hosts around: your clouds' devices by cloud,...\n"
    '  forget    Forget a known peer (by name or id): it will have to pair again.\n'
    '  get       Fetch the shared files NAME...\n'
    '  group     Group keys delivered end to end (through relays), and...\n'
    '  host      Wait for guests, pair with them, and serve the shared folder.\n'
    "  init      Create this device's identity and keystore.\n"
    '  join      Pair with TARGET: tcp:HOST:PORT, a BLE address from...\n'
    '  ls        List the files PEER shares (name, size, type).\n'
    '  peers     List the devices this one has paired with, as a table.\n'
    '  pn        Personal networks set up by a gateway and a key server.\n'
    '  radio     Linked virtual BLE controllers, one per TCP port, until...\n'
    '  ttp       Run a key server (a trusted third party) and enrol devices...\n'
    "  whoami    Show this device's name, id, key fingerprint and default...\n"
    '\n'
    '  Exit codes:\n'
    '      0  success\n'
    '      1  any other failure (a radio that cannot be used, a misbehaving peer)\n'
    '      2  usage: a bad option, argument, transport, QR code or config.toml\n'
    '      3  authentication: a wrong PIN or QR code, a locked keystore\n'
    '      4  timeout: the other side did not answer in time\n'
    '      5  refused: by the owner or a policy (lockout, method), cancelled, no permission\n'
    '      6  not found: no such peer, host, file, identity or controller\n'
    '      7  connection lost: the other side went away mid-way\n'
    '      8  busy: the host is serving as many peers as it can; try again in a moment\n'
    '     70  internal error: a bug (rerun with --debug and report it)\n'
    '    130  interrupted (Ctrl-C)\n'
)



def render() -> str:
    """click's rendering of ``pairkit --help`` on a terminal of 80 columns or more (click lays
    help out at 78 there, and in a pipe)."""
    import click

    from .main import cli

    settings = {**cli.context_settings, "terminal_width": 78, "max_content_width": 80}
    with click.Context(cli, info_name="pairkit", **settings) as ctx:
        return cli.get_help(ctx) + "\n"


def source(text: str) -> str:
    """``HELP = (...)`` with one string per line of ``text``."""
    lines = text.splitlines(keepends=True)
    return "HELP = (\n" + "".join(f"    {line!r}\n" for line in lines) + ")\n"


if __name__ == "__main__":
    from pathlib import Path

    path = Path(__file__)
    text = path.read_text()
    start = text.index("\nHELP = ") + 1
    end = text.index("\n\n\ndef render")
    path.write_text(text[:start] + source(render()) + text[end:])
    print(f"wrote {path}")
