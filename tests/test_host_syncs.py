"""The host-sync audit itself, and the pieces that keep the host from waiting for the device.

On a GPU a read of a device value (``float(t)``, ``bool(mask.all())``) or a blocking upload of host
data (``noise.to("cuda")``) stalls the device until the host catches up.
:class:`anysize.testing.syncs.HostSyncAudit` follows, on a CPU, the tensors that would live on the
device and records such places; the method contract (tests/test_method_contract.py) runs every
registered method under it.
"""

from __future__ import annotations

import pytest
import torch

from anysize.devices import TensorKeyed, upload
from anysize.models import adapt
from anysize.noise import NoiseSpace, host_table, schedule_position, timestep_value
from anysize.schedulers import make_scheduler
from anysize.testing.syncs import HostSyncAudit


@pytest.fixture
def tiny_adapter(tiny):
    return lambda family: adapt(tiny(family))


# ------------------------------------------------------------------------------ the audit itself


def test_audit_records_reads_and_blocking_uploads_of_device_values():
    x = torch.randn(4)
    with HostSyncAudit([x], package="/tests/") as audit:
        y = x * 2  # derived: on the device too
        float(y[0])  # read
        bool((y > 0).all())  # read
        y.cpu()  # read
        y[y > 0]  # boolean mask: read
        host = torch.randn(3)  # host data (no device given)
        host.to(torch.device("cpu"))  # blocking upload
        upload(host, torch.device("cpu"))  # non-blocking: fine
        torch.tensor([1, 2], device=torch.device("cpu"))  # host list copied to the device: upload
        float(host[0])  # a host value: fine
        z = torch.zeros(2, device=x.device)  # created on the device
        int(z[0])  # read
    kinds = [(e.kind, e.op) for e in audit.events]
    assert kinds == [("read", "__float__"), ("read", "__bool__"), ("read", "cpu"), ("read", "__getitem__"),
                     ("upload", "to"), ("upload", "tensor"), ("read", "__int__")]
    assert all("test_host_syncs.py" in e.where for e in audit.events)
    assert "__float__" in audit.report()


def test_audit_follows_in_place_writes_and_ignores_configured_code():
    x = torch.zeros(3)
    with HostSyncAudit([x], package="/tests/", ignore=("test_host_syncs.py",)) as audit:
        float(x[0])
    assert audit.events == []
    with HostSyncAudit([x], package="/tests/") as audit:
        x.add_(1)  # the version counter moves; still a device tensor
        x[0] = 5.0
        float(x[1])
    assert [e.op for e in audit.events] == ["__float__"]


def test_tensor_keyed_cache_forgets_dead_and_changed_tensors():
    cache = TensorKeyed()
    t = torch.arange(3.0)
    cache.put(t, "a")
    assert cache.get(t) == "a" and t in cache
    assert cache.get(t.clone()) is None
    t.add_(1)  # changed in place: the entry no longer holds
    assert cache.get(t) is None
    cache.put(t, "b")
    del t
    assert not cache._entries
    unversioned = TensorKeyed(versioned=False)
    u = torch.ones(2)
    unversioned.put(u, 1)
    u.mul_(2)
    assert unversioned.get(u) == 1


# ------------------------------------------------------------------------------ timesteps without reads


def test_schedule_position_is_found_from_metadata_only():
    table = torch.tensor([999, 750, 500, 250, 0])
    assert [schedule_position(table[i], table) for i in range(5)] == list(range(5))
    assert schedule_position(table[2:3], table) == 2
    assert schedule_position(table[1:][2], table) == 3  # a view of a slice (img2img tail)
    assert schedule_position(table[::2][1], table) == 2
    assert schedule_position(table[1].clone(), table) is None
    assert schedule_position(table[1:3], table) is None  # two elements
    assert schedule_position(table.float()[1], table) is None
    assert schedule_position(table[1], None) is None


@pytest.mark.parametrize("name", ["ddim", "euler", "dpm++2m_karras", "heun", "flow_euler"])
def test_noise_space_reads_the_device_schedule_once(tiny_adapter, name):
    adapter = tiny_adapter("sd3" if name.startswith("flow") else "sd1")
    scheduler = make_scheduler(adapter, name)
    timesteps = adapter.set_timesteps(scheduler, 6, adapter.native_latent_size)
    ns = NoiseSpace.of(scheduler)
    on_host = [(ns.sigma(float(t)), ns.coefficients(float(t)), ns.input_scale(float(t))) for t in timesteps.tolist()]
    with HostSyncAudit([scheduler.timesteps]) as audit:
        on_device = [(ns.sigma(timesteps[i]), ns.coefficients(timesteps[i]), ns.input_scale(timesteps[i]))
                     for i in range(len(timesteps))]
        assert timestep_value(timesteps[3], scheduler.timesteps) == float(host_table(timesteps)[3])
    assert on_device == on_host
    # at most the one host copy of the table (made earlier when the host path already needed it)
    assert len(audit.events) <= 1 and all("host_table" in e.where for e in audit.events), audit.report()


# ------------------------------------------------------------------------------ every method
# every registered method on every family it supports: tests/test_method_contract.py
