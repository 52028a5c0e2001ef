"""Logging off the hot path: no line per message at INFO, a periodic summary with the counts,
and every error still logged on its own with the message id and the stage."""

from __future__ import annotations

from helpers.processes import ProcessorProcess
from helpers.support import (
    cli_env,
    dropin_folder,
    pipeline_config,
    queue_counts,
    stored_objects,
    wait_for,
    write_config,
)

REFUSER = '''
from sqs_processor import TransformSpec, hookimpl


def refuse(record):
    if record.message.body == "poison":
        raise ValueError("refusing this one")
    return record


@hookimpl
def sqs_processor_transforms():
    return TransformSpec("refuser", lambda options, context: refuse, "Fails on 'poison'.")
'''


def test_info_logs_sum_up_the_work_and_still_name_each_failed_message(
        tmp_path, aws_env, sqs, s3, queue_url, bucket, child):
    folder = dropin_folder(tmp_path, refuser=REFUSER)
    config = pipeline_config(queue_url, bucket, plugins={"paths": [str(folder)]},
                             transforms=["json_parse", "refuser", "enrich"],
                             service={"log_summary_seconds": 1})
    process = ProcessorProcess(write_config(tmp_path, config), cli_env(aws_env), "summary",
                               log_level="info")
    child.append(process)
    process.wait_event("started", timeout=30)
    good = [sqs.send_message(QueueUrl=queue_url, MessageBody=f'{{"n": {i}}}')["MessageId"]
            for i in range(12)]
    poison = sqs.send_message(QueueUrl=queue_url, MessageBody="poison")["MessageId"]
    wait_for(lambda: len(stored_objects(s3, bucket)) == 12, timeout=60, message="12 objects")
    failed = process.wait_event("failed", message_id=poison)
    assert failed["stage"] == "transform:refuser" and failed["level"] == "warning"
    wait_for(lambda: queue_counts(sqs, queue_url)[0] == 0 and
             sum(r["deleted"] for r in process.events("summary")) == 12, timeout=60,
             message="the summaries to count 12 deletes")
    process.terminate()
    assert process.finish() == 0

    summaries = process.events("summary")
    assert all(r["level"] == "info" for r in summaries)
    assert sum(r["received"] for r in summaries) >= 13  # the poison may come back again
    assert sum(r["stored"] for r in summaries) == sum(r["written"] for r in summaries) == 12
    assert sum(r["failed"] for r in summaries) >= 1 and sum(r["errors"] for r in summaries) >= 1
    assert sum(r["polls"] for r in summaries) >= 1
    assert all(r["delete_calls"] <= r["deleted"] for r in summaries)
    # Nothing per message or per poll at INFO.
    for event in ("stored", "already_stored", "acked", "received", "dropped"):
        assert not process.events(event), f"{event} logged at INFO"
    stored_ids = {doc["message_id"] for doc in stored_objects(s3, bucket).values()}
    assert stored_ids == set(good)
