"""The database schema, one module per area, on one shared metadata (``base.Base``):

- accounts: facilities, users, sessions, password resets, the audit trail;
- intake: batches, uploads, chunks, the listener's allowed callers;
- dicom: studies, series, instances; editing: templates, metadata changes, origins;
- delivery: destinations, breaker state, routing rules, deliveries, renditions;
- lifecycle: stored objects and tiers, restores, lifecycle runs;
- analytics: materialised stats; forecasting: calendars and forecasts; exports: definitions and runs;
- ops: queue canaries, the event outbox; comments: report comments, consults, addenda,
  notifications, mail preferences.

PostgreSQL is the source of truth in production; the same models run on SQLite for the
embedded demo. Every row a facility owns carries ``facility_id`` so queries can be scoped.
Every name is re-exported here, so ``from pipeline.models import Upload`` stays short and
importing this package registers every mapper (Alembic and ``configure_mappers`` need all).
"""

from pipeline.models.accounts import READER_ROLES as READER_ROLES
from pipeline.models.accounts import AuditEvent as AuditEvent
from pipeline.models.accounts import Facility as Facility
from pipeline.models.accounts import PasswordReset as PasswordReset
from pipeline.models.accounts import ReaderAssignment as ReaderAssignment
from pipeline.models.accounts import Role as Role
from pipeline.models.accounts import User as User
from pipeline.models.accounts import UserSession as UserSession
from pipeline.models.accounts import primary_role as primary_role
from pipeline.models.analytics import LATENCY_BUCKETS_MS as LATENCY_BUCKETS_MS
from pipeline.models.analytics import STATS_INCLUDE as STATS_INCLUDE
from pipeline.models.analytics import AnalyticsWatermark as AnalyticsWatermark
from pipeline.models.analytics import DailyFacilityStats as DailyFacilityStats
from pipeline.models.analytics import HourlyStats as HourlyStats
from pipeline.models.analytics import WeeklyFacilityStats as WeeklyFacilityStats
from pipeline.models.base import MAX_ROW_ID as MAX_ROW_ID
from pipeline.models.base import Base as Base
from pipeline.models.base import UTCDateTime as UTCDateTime
from pipeline.models.base import utcnow as utcnow
from pipeline.models.comments import ConsultRequest as ConsultRequest
from pipeline.models.comments import ConsultStateChange as ConsultStateChange
from pipeline.models.comments import MailPreference as MailPreference
from pipeline.models.comments import Notification as Notification
from pipeline.models.comments import ReportAddendum as ReportAddendum
from pipeline.models.comments import ReportComment as ReportComment
from pipeline.models.delivery import BreakerState as BreakerState
from pipeline.models.delivery import Delivery as Delivery
from pipeline.models.delivery import DeliverySender as DeliverySender
from pipeline.models.delivery import DeliveryState as DeliveryState
from pipeline.models.delivery import Destination as Destination
from pipeline.models.delivery import DestinationHealth as DestinationHealth
from pipeline.models.delivery import InstanceRendition as InstanceRendition
from pipeline.models.delivery import RoutingRule as RoutingRule
from pipeline.models.dicom import ConflictKind as ConflictKind
from pipeline.models.dicom import ConflictState as ConflictState
from pipeline.models.dicom import Instance as Instance
from pipeline.models.dicom import InstanceOrigin as InstanceOrigin
from pipeline.models.dicom import InstanceVersion as InstanceVersion
from pipeline.models.dicom import Series as Series
from pipeline.models.dicom import SopInstance as SopInstance
from pipeline.models.dicom import Study as Study
from pipeline.models.editing import MetadataChange as MetadataChange
from pipeline.models.editing import UploadTemplate as UploadTemplate
from pipeline.models.exports import ExportDefinition as ExportDefinition
from pipeline.models.exports import ExportRun as ExportRun
from pipeline.models.exports import ExportRunState as ExportRunState
from pipeline.models.forecasting import FacilityCalendar as FacilityCalendar
from pipeline.models.forecasting import UploadForecast as UploadForecast
from pipeline.models.intake import TERMINAL_UPLOAD_STATES as TERMINAL_UPLOAD_STATES
from pipeline.models.intake import UPLOAD_EVENT_FIELDS as UPLOAD_EVENT_FIELDS
from pipeline.models.intake import Batch as Batch
from pipeline.models.intake import BatchState as BatchState
from pipeline.models.intake import ScpCaller as ScpCaller
from pipeline.models.intake import Upload as Upload
from pipeline.models.intake import UploadChunk as UploadChunk
from pipeline.models.intake import UploadState as UploadState
from pipeline.models.lifecycle import DrState as DrState
from pipeline.models.lifecycle import ObjectState as ObjectState
from pipeline.models.lifecycle import RestoreRequest as RestoreRequest
from pipeline.models.lifecycle import RestoreState as RestoreState
from pipeline.models.lifecycle import StorageRun as StorageRun
from pipeline.models.lifecycle import StoredObject as StoredObject
from pipeline.models.lifecycle import StoredObjectKind as StoredObjectKind
from pipeline.models.ops import OutboxEvent as OutboxEvent
from pipeline.models.ops import QueueCanary as QueueCanary
from pipeline.models.reports import RadiologyReport as RadiologyReport
from pipeline.models.reports import ReportPollState as ReportPollState
from pipeline.models.reports import ReportSource as ReportSource
from pipeline.models.reports import ReportStatus as ReportStatus
from pipeline.models.reports import ReportStatusChange as ReportStatusChange
from pipeline.models.reports import StudyReportCheck as StudyReportCheck
from pipeline.models.teaching import CaseState as CaseState
from pipeline.models.teaching import Difficulty as Difficulty
from pipeline.models.teaching import Preparation as Preparation
from pipeline.models.teaching import TeachingCase as TeachingCase
from pipeline.models.teaching import TeachingCaseSource as TeachingCaseSource
from pipeline.models.teaching import TeachingIdentityMap as TeachingIdentityMap
from pipeline.models.teaching import TeachingInstance as TeachingInstance
from pipeline.models.teaching import TeachingInstanceState as TeachingInstanceState
