"""Exceptions the library raises to its callers.

    CrawlerError                 base: everything the CLI turns into one line
    ├── ConfigError              a setting has an invalid value (exit 2)
    ├── InputError               unusable input: unreadable file, no valid URL (exit 2)
    ├── BackendUnavailable       Redis or the broker does not answer (exit 2)
    ├── JobNotFound              an unknown job id (exit 2)
    └── JobActive                an operation that needs an ended job (exit 2)

Failures of a single fetch are *not* exceptions: they become a record's `error` class
(see `crawler.records.ErrorClass`), so one bad URL never stops a crawl.
"""

from __future__ import annotations


class CrawlerError(Exception):
    """Base of every error the crawler raises on purpose."""

    exit_code = 1


class ConfigError(CrawlerError):
    exit_code = 2


class InputError(CrawlerError):
    exit_code = 2


class BackendUnavailable(CrawlerError):
    exit_code = 2


class JobNotFound(CrawlerError):
    exit_code = 2


class JobActive(CrawlerError):
    exit_code = 2
