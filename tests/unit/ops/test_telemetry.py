from pipeline.ops.telemetry import Telemetry, _field, render


def test_histogram_and_counters_render_as_prometheus_text():
    t = Telemetry(None)
    t.observe_request("/api/v1/batches", "GET", 200, 0.02, 0)
    t.observe_request("/api/v1/batches", "GET", 429, 0.002, 0)
    t.observe_task("pacs.forward_study", 1.5, "success")
    text = "\n".join(render(t.snapshot()))
    assert "# TYPE relaypacs_http_request_duration_seconds histogram" in text
    assert ('relaypacs_http_requests_total{method="GET",route="/api/v1/batches",status="429"} 1'
            in text)
    assert ('relaypacs_http_request_duration_seconds_bucket{le="0.005",method="GET",'
            'route="/api/v1/batches"} 1') in text
    assert 'relaypacs_tasks_total{outcome="success",task="pacs.forward_study"} 1' in text
    assert 'relaypacs_task_duration_seconds_bucket{le="1.0",task="pacs.forward_study"}' not in text


def test_metrics_endpoint_counts_requests(client, make_token):
    headers = {"Authorization": f"Bearer {make_token('Clinic A')}"}
    client.get("/api/v1/batches", headers=headers)
    body = client.get("/metrics").get_data(as_text=True)
    assert 'relaypacs_http_requests_total{method="GET",route="/api/v1/batches",status="200"}' in body
    assert "relaypacs_uploads" in body


def test_dead_letters_are_a_series_per_destination_even_at_zero(client, session):
    from pipeline.models import Destination

    session.add(Destination(name='pacs "main"', kind="folder", options={"path": "/tmp/x"}))
    session.commit()
    body = client.get("/metrics").get_data(as_text=True)
    # Label values are escaped, so a destination's name cannot break the exposition format.
    assert 'relaypacs_dead_letters{kind="delivery",destination="pacs \\"main\\""} 0' in body
    assert 'relaypacs_dead_letters{kind="report_run"} 0' in body


def test_counts_wait_in_memory_while_redis_is_unreachable():
    """A request pays for a dict update; a Redis outage neither raises nor loses the counts
    (they are kept, bounded, for the next flush)."""
    from tests.integration.services import free_port

    t = Telemetry(f"redis://127.0.0.1:{free_port()}/0", flush_seconds=3600)
    t.observe_request("/api/v1/batches", "GET", 200, 0.01, 0)
    t.flush()  # nobody listens on that port
    t.observe_request("/api/v1/batches", "GET", 200, 0.01, 0)
    field = _field("relaypacs_http_requests_total", method="GET", route="/api/v1/batches", status="200")
    assert t._local[field] == 2
