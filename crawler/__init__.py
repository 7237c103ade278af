"""crawler: a distributed task-queue web crawler.

The public API is re-exported here; everything else is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from crawler.api import AsyncCrawler, Crawler
from crawler.errors import (
    BackendUnavailable,
    ConfigError,
    CrawlerError,
    InputError,
    JobNotFound,
)
from crawler.jobs import JobState, JobStatus
from crawler.options import CrawlOptions
from crawler.records import ErrorClass, Record
from crawler.settings import Settings, load_settings

__all__ = [
    "AsyncCrawler",
    "BackendUnavailable",
    "ConfigError",
    "CrawlOptions",
    "Crawler",
    "CrawlerError",
    "ErrorClass",
    "InputError",
    "JobNotFound",
    "JobState",
    "JobStatus",
    "Record",
    "Settings",
    "__version__",
    "load_settings",
]
