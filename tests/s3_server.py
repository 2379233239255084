"""A real S3 server on loopback for the tests and the crash harness: moto's server mode, the way s3fs's
own suite tests against S3 (ThreadedMotoServer on 127.0.0.1, in this process)."""

from __future__ import annotations

import os

# What a run needs to reach it: botocore reads these (no credentials file, no real AWS).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "itertrain-test", "AWS_SECRET_ACCESS_KEY": "itertrain-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's S3 server on 127.0.0.1 (its state lives in this process: stop() then start() again on the
    same port is a store that was down and came back with its objects)."""

    def __init__(self):
        self.port = 0
        self.server = None
        self.start()

    def start(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        self.server.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def bucket(self, name: str) -> str:
        """A new bucket; its s3:// URL."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, **_boto(CREDENTIALS)).create_bucket(Bucket=name)
        return f"s3://{name}"

    def buckets(self) -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto(CREDENTIALS))
        return [b["Name"] for b in client.list_buckets().get("Buckets", [])]

    def listing(self, url: str) -> dict[str, int]:
        """{key under the URL's prefix: size}."""
        import boto3

        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto(CREDENTIALS))
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(prefix):].lstrip("/")] = obj["Size"]
        return out

    def get(self, url: str, key: str) -> bytes:
        import boto3

        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto(CREDENTIALS))
        return client.get_object(Bucket=bucket, Key=f"{prefix}/{key}".lstrip("/"))["Body"].read()


def _boto(env: dict) -> dict:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


def require_auth(on: bool) -> None:
    """Make the server refuse requests whose credentials it does not know (moto's IAM check), or not."""
    from moto import settings

    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0 if on else float("inf")
    os.environ.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
