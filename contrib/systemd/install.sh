#!/bin/sh
# Install pairkit as a system service (contrib/systemd/pairkit-host.service); README.md,
# "A Raspberry Pi". Run from the repository, as root:   sudo contrib/systemd/install.sh
#
# Makes the system user `pairkit`, a venv of its own in /opt/pairkit/venv with pairkit in it,
# the keystore in /var/lib/pairkit (asks its PIN once, and a device name), the PIN file
# /etc/pairkit/host.env (root only: systemd reads it and hands the PIN to the service), a
# starting policy /var/lib/pairkit/config.toml, and enables the service. Run again to upgrade:
# what exists is kept.
set -eu

PREFIX=/opt/pairkit
STATE=/var/lib/pairkit
CONF=/etc/pairkit
UNIT=/etc/systemd/system/pairkit-host.service
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-python3}

if [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (sudo $0)" >&2
    exit 1
fi

id pairkit >/dev/null 2>&1 || useradd --system --home-dir "$STATE" --shell /usr/sbin/nologin \
    --user-group pairkit
install -d -m 0700 -o pairkit -g pairkit "$STATE"
install -d -m 0755 "$PREFIX"
install -d -m 0700 "$CONF"

# The venv belongs to root (the service cannot change its own code); its interpreter is the
# one the unit names. No capability is set on any file.
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install -q --upgrade "$SRC"
install -m 0644 "$SRC/README.md" "$PREFIX/README.md"

if [ ! -s "$CONF/host.env" ]; then
    printf 'Keystore PIN for the pairkit service (6+ digits): ' >&2
    stty -echo 2>/dev/null || true
    read -r PIN
    stty echo 2>/dev/null || true
    echo >&2
    umask 077
    printf 'PAIRKIT_PIN=%s\n' "$PIN" > "$CONF/host.env"
    unset PIN
fi
chmod 0600 "$CONF/host.env"

if [ ! -e "$STATE/keystore.pk" ]; then
    NAME=${PAIRKIT_NAME:-$(hostname)}
    # The PIN reaches init in its environment (runuser passes it on), never on a command line.
    PAIRKIT_PIN=$(sed -n 's/^PAIRKIT_PIN=//p' "$CONF/host.env") \
        runuser -u pairkit -- env PAIRKIT_HOME="$STATE" \
        "$PREFIX/venv/bin/python" "$PREFIX/venv/bin/pairkit" init --name "$NAME"
fi

if [ ! -e "$STATE/config.toml" ]; then
    cat > "$STATE/config.toml" <<'TOML'
[host]
transport = "bumble:hci-socket:0"
methods = ["pin", "qr", "resume"]
# visible = 600            # open a visibility window of 600 s at every start
# share = "/srv/videos"    # a folder the pairkit user can read
TOML
    chown pairkit:pairkit "$STATE/config.toml"
    chmod 0600 "$STATE/config.toml"
fi

install -m 0644 "$SRC/contrib/systemd/pairkit-host.service" "$UNIT"
systemctl daemon-reload
systemctl enable --now pairkit-host.service
echo "pairkit-host is running: journalctl -u pairkit-host -f (PIN and QR code for guests)"
