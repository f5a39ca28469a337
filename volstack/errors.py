"""CloudStack error codes as exceptions.

Every layer raises these; only the API layer turns them into HTTP responses. The numbers are
CloudStack's (ApiErrorCode and the cserrorcode of the exception class) so clients that switch on
them keep working.
"""


class CloudError(Exception):
    errorcode = 530
    cserrorcode = 4250

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class Unauthorized(CloudError):
    errorcode = 401
    cserrorcode = 9999


class MethodNotAllowed(CloudError):
    errorcode = 405
    cserrorcode = 9999


class MalformedParameter(CloudError):
    errorcode = 430
    cserrorcode = 9999


class InvalidParameter(CloudError):
    errorcode = 431
    cserrorcode = 4350


class UnknownCommand(CloudError):
    errorcode = 432
    cserrorcode = 9999


class InternalError(CloudError):
    errorcode = 530
    cserrorcode = 4250


class PermissionDenied(CloudError):
    errorcode = 531
    cserrorcode = 4365


class ResourceLimitExceeded(CloudError):
    """CloudStack's resource limit check throws ResourceAllocationException, which its API server answers with
    RESOURCE_ALLOCATION_ERROR (535); 532 (ACCOUNT_RESOURCE_LIMIT_ERROR) is only the public IP path's."""
    errorcode = 535
    cserrorcode = 4370


class InsufficientCapacity(CloudError):
    errorcode = 533
    cserrorcode = 4325


class ResourceUnavailable(CloudError):
    errorcode = 534
    cserrorcode = 4380


class ResourceInUse(CloudError):
    errorcode = 536
    cserrorcode = 4375


class NotFound(InvalidParameter):
    """CloudStack reports unknown ids as parameter errors (431)."""
