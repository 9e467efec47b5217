# Shared by the scripts. Everything here is idempotent: it installs only what
# is missing.

# apt_install PACKAGE...: installs Debian packages (as root or with sudo).
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing: $*" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# ensure_debian_packages COMMAND:PACKAGE...: installs PACKAGE when COMMAND is missing.
ensure_debian_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# ensure_test_venv: the Python venv of the HTTP/3 test client (aioquic), in .venv-test/.
ensure_test_venv() {
    local venv=.venv-test
    if "$venv/bin/python" -c 'import aioquic' >/dev/null 2>&1; then
        return 0
    fi
    echo "creating $venv with aioquic" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q --disable-pip-version-check 'aioquic==1.7.2'
}
