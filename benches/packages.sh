# Which Debian package brings each tool the benches and scripts/build-pgo run, and installing
# the missing ones. Sourced by benches/run and scripts/build-pgo; the caller defines log().

# package_of TOOL: the Debian package that installs TOOL
package_of() {
  case "$1" in
    nginx) echo nginx-light ;; # the small build; install_packages falls back to nginx
    h2load) echo nghttp2-client ;;
    taskset | setsid) echo util-linux ;;
    ss) echo iproute2 ;;
    busybox) echo busybox-static ;;
    *) echo "$1" ;; # wrk, haproxy, curl, iperf3, python3, openssl
  esac
}

# missing_packages TOOL...: the packages of the TOOLs not on PATH, one a line
missing_packages() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || package_of "$tool"
  done | sort -u
}

APT_UPDATED=0
# apt_install PACKAGE...: installs them (root only), updating the package lists once
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# install_packages PACKAGE...: as root installs them, taking nginx where nginx-light is not
# packaged; otherwise exits naming them. A freshly installed nginx or haproxy may start its
# system service: nothing here uses it, and it is left as the package set it up.
install_packages() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    log "missing $*: install them (apt-get install $*) or run as root"
    exit 1
  fi
  log "installing $*"
  apt_install "$@" || apt_install "${@/nginx-light/nginx}"
}

# need_tools TOOL...: installs what brings the TOOLs that are missing, and checks they came
need_tools() {
  local missing tool
  mapfile -t missing < <(missing_packages "$@")
  install_packages "${missing[@]}"
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { log "$tool still missing after apt-get"; exit 1; }
  done
}
