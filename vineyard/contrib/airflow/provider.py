"""Airflow provider metadata (entry point ``apache_airflow_provider``).

Declaring the ``[vineyard]`` section here is what makes ``airflow config list`` show the
options with their defaults, and ``cli`` adds ``airflow vineyard gc`` / ``cleanup``.
Importing this module must stay cheap: every Airflow process loads it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_provider_info"]

_SINCE = "0.1.0"  # vineyard release that added the options

_OPTIONS: dict[str, dict[str, Any]] = {
    "ipc_socket": {
        "description": "UNIX socket of the vineyard daemon on this host. When empty, the "
        "VINEYARD_IPC_SOCKET environment variable is used.\n",
        "version_added": _SINCE,
        "type": "string",
        "example": "/run/vineyard.sock",
        "default": "",
    },
    "persist": {
        "description": "Persist stored XCom objects (publish their metadata to the vineyard cluster).\n",
        "version_added": _SINCE,
        "type": "boolean",
        "example": "True",
        "default": "False",
    },
    "threshold_bytes": {
        "description": "DataFrames, Series, ndarrays and Arrow tables/record batches at least this many "
        "bytes go to the store; smaller or other values use Airflow's serialization. 0 stores every "
        "such value, -1 none.\n",
        "version_added": _SINCE,
        "type": "integer",
        "example": "0",
        "default": "1048576",
    },
    "on_unavailable": {
        "description": "What a task does when the store is down, unconfigured or full while pushing: "
        "'error' fails the task (Airflow's retries apply), 'inline' falls back to Airflow's own "
        "serialization with one warning per process.\n",
        "version_added": _SINCE,
        "type": "string",
        "example": "inline",
        "default": "error",
    },
    "ttl_seconds": {
        "description": "Delete stored XCom objects older than this many seconds, whenever a task stores "
        "a value and on `airflow vineyard gc`. Empty or 0 turns it off. Airflow does not purge "
        "XCom objects at the end of a run; see the cleanup task and `airflow vineyard gc`.\n",
        "version_added": _SINCE,
        "type": "integer",
        "example": "86400",
        "default": "",
    },
}


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow's ProvidersManager reads."""
    return {
        "package-name": "vineyard",
        "name": "Vineyard",
        "description": "XCom backend keeping DataFrames, arrays and Arrow tables in a vineyard "
        "shared-memory store, so tasks on one host exchange them without copies.\n",
        "config": {
            "vineyard": {
                "description": "The vineyard XCom backend "
                "(vineyard.contrib.airflow.xcom.VineyardXCom).\n",
                "options": _OPTIONS,
            }
        },
        "cli": ["vineyard.contrib.airflow.cli.get_cli_commands"],
    }
