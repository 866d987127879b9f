# The two commands of the README: `make demo` and `make test`. Both set up what they need on a
# fresh Debian 12 machine (as root): Debian packages, the venv, the generated protobuf code.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
GUESTS := ../shared/guests
GUEST_DIR ?= /var/tmp/guests/linux
DEMO_OUT ?= /var/tmp/v2v-demo
# Two pytest-xdist workers: most of the suite is one-vCPU TCG guests and appliances, so two side by side
# take the time of about one on CI's two cores.
TEST_WORKERS ?= 2
export LIBGUESTFS_BACKEND ?= direct
export LIBGUESTFS_BACKEND_SETTINGS ?= force_tcg

# chromium and its driver: the console's browser test (tests/test_console.py, selenium).
DEB_PACKAGES := nbdkit libnbd-bin python3-libnbd python3-guestfs libguestfs-tools qemu-utils \
	qemu-system-x86 linux-image-amd64 libvirt-clients libvirt-daemon-system python3-libvirt python3-venv \
	debootstrap fdisk e2fsprogs dosfstools mtools ovmf libxml2-utils xfsprogs libguestfs-xfs \
	openssh-client openssh-server sshpass openssl rpm busybox iproute2 \
	python3-hivex libwin-hivex-perl libhivex-bin genisoimage \
	chromium chromium-driver
PROTOS := $(wildcard protos/v2v/v1/*.proto)
GENERATED := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))
# The buf CLI is npm's @bufbuild/buf (PyPI's `buf` is another program), pinned in package-lock.json.
BUF := node_modules/.bin/buf

.PHONY: setup deps docker demo test unit lint buf protos clean

setup: deps $(VENV)/.installed $(BUF) protos

# Debian packages: installed only when one is missing, so repeated runs cost nothing.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@# npm (for buf) comes with the machine's Node.js; Debian's pair only where there is none, since
	@# Debian's npm package conflicts with a Node.js that bundles its own npm.
	@command -v npm >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }

# --system-site-packages: the nbd and guestfs bindings come from Debian, not PyPI.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# npm ci installs exactly the locked versions into ./node_modules. npm 11 skips buf's postinstall
# script; buf's launcher finds the platform binary (@bufbuild/buf-linux-x64) without it.
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

protos: $(GENERATED)

v2v/v1/%_pb2.py: protos/v2v/v1/%.proto $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $<

demo: setup
	$(GUESTS)/make-linux-guest.sh -o $(GUEST_DIR) -F qcow2 >/dev/null
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	$(VENV)/bin/v2v -i disk $(GUEST_DIR)/debian12-vmware.raw -o local -os $(DEMO_OUT) -of qcow2
	@echo
	@echo "Converted guest in $(DEMO_OUT):"; ls -l $(DEMO_OUT)
	@echo "Boot it under virtio:  $(GUESTS)/boot-test.sh -b virtio $(DEMO_OUT)/debian12-vmware-sda"
	@echo "or with libvirt:       virsh define $(DEMO_OUT)/debian12-vmware.xml"

# The Docker engine (Debian's docker.io), mmdebstrap and compose v2 for tests/test_deploy.py; no dockerd
# is started here (the test starts one without bridge or iptables when none answers, then stops it).
docker:
	deploy/docker-engine.sh setup

test: setup docker buf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -v -rs --durations=40 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The pure tests: no appliance, no guest, no service process; seconds.
unit: setup
	$(PY) -m pytest -q tests/unit

lint: setup buf
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The protos' style (buf.yaml says which rules and why some are off) and their compatibility with
# the last published API (protos/buf-breaking.sh says which commit that is).
buf: $(BUF)
	$(BUF) lint
	BUF=$(BUF) protos/buf-breaking.sh

clean:
	rm -rf $(VENV) node_modules v2v/v1/*_pb2*.py *.egg-info
