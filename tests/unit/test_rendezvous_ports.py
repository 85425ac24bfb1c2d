"""Where a ring's rank 0 serves its rendezvous: two rings on one host (two jobs on the local fleet, two local clouds on
one machine) must not be sent to one port, and a job's next generation never reuses the port of the one closing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringfleet.core.commands import RENDEZVOUS_BASE_PORT, RENDEZVOUS_PORTS, reconfigure_command, rendezvous_port
from tests.builders import T0, running_job

pytestmark = pytest.mark.unit


def test_two_submissions_of_the_same_job_id_get_different_ports() -> None:
    # given the same job, submitted to two local clouds (its id and generation the same in both)
    ports = {rendezvous_port(running_job("acme-model")[0]) for _ in range(20)}
    # then their rings are spread over the port range instead of meeting on one port
    assert len(ports) >= 19, f"20 submissions of one job id shared ports: {sorted(ports)}"
    assert all(RENDEZVOUS_BASE_PORT <= p < RENDEZVOUS_BASE_PORT + RENDEZVOUS_PORTS < 32768 for p in ports)


def test_the_port_is_the_same_for_every_decision_of_one_generation_and_moves_with_the_next() -> None:
    job, nodes = running_job()
    first = reconfigure_command(job, nodes, T0, checkpoint=None)
    again = reconfigure_command(job, nodes, T0, checkpoint=None)
    assert first.rendezvous == again.rendezvous == f"10.0.0.1:{rendezvous_port(job)}"
    ports = [rendezvous_port(replace(job, generation=g)) for g in range(1, 10)]
    assert len(set(ports)) == len(ports), f"consecutive generations of one job reuse a port: {ports}"
