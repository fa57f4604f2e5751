//! What a failed btleplug/BlueZ call tells us about the world.
//!
//! btleplug wraps BlueZ's D-Bus errors in `Error::Other(BluetoothError::DbusError)`, whose
//! text is only the message ("le-connection-abort-by-local"); the D-Bus error *name* is what
//! says whether bluetoothd is gone, the object was forgotten or the call merely failed. So
//! the error is unwrapped down to the `dbus::Error` (bluez-async is a direct dependency for
//! this downcast; it is the very crate btleplug uses).

use bluez_async::BluetoothError;

/// How the transport reacts to a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// bluetoothd is not on the bus (restarting, crashed), or the adapter is powered off or
    /// gone: re-acquire the adapter.
    Adapter,
    /// The device object is gone (BlueZ forgot it, e.g. after a restart): find it again.
    Device,
    /// BlueZ is already doing this (a scan or a connect in progress).
    InProgress,
    /// The device is not connected.
    NotConnected,
    /// Anything else: the call failed, the world is as it was.
    Other,
}

/// The D-Bus error name and message inside a btleplug error, if it came from D-Bus.
pub fn dbus_error(e: &btleplug::Error) -> Option<(String, String)> {
    let btleplug::Error::Other(inner) = e else {
        return None;
    };
    match inner.downcast_ref::<BluetoothError>()? {
        BluetoothError::DbusError(d) => Some((
            d.name().unwrap_or_default().to_owned(),
            d.message().unwrap_or_default().to_owned(),
        )),
        _ => None,
    }
}

pub fn classify(e: &btleplug::Error) -> Fault {
    match e {
        btleplug::Error::DeviceNotFound => return Fault::Device,
        btleplug::Error::NotConnected => return Fault::NotConnected,
        btleplug::Error::NoAdapterAvailable => return Fault::Adapter,
        _ => {}
    }
    if let btleplug::Error::Other(inner) = e
        && matches!(
            inner.downcast_ref::<BluetoothError>(),
            Some(BluetoothError::NoBluetoothAdapters)
        )
    {
        return Fault::Adapter;
    }
    match dbus_error(e) {
        Some((name, message)) => classify_dbus(&name, &message),
        None => Fault::Other,
    }
}

/// Classifies by D-Bus error name (and, for BlueZ's catch-all `Failed`, its message).
pub fn classify_dbus(name: &str, message: &str) -> Fault {
    match name {
        // Nobody owns org.bluez: bluetoothd is down or restarting.
        "org.freedesktop.DBus.Error.ServiceUnknown"
        | "org.freedesktop.DBus.Error.NameHasNoOwner"
        | "org.freedesktop.DBus.Error.NoReply"
        | "org.freedesktop.DBus.Error.Disconnected"
        | "org.freedesktop.DBus.Error.Timeout"
        | "org.bluez.Error.NotReady" => Fault::Adapter,
        // An object path the (new) bluetoothd does not export.
        "org.freedesktop.DBus.Error.UnknownObject"
        | "org.freedesktop.DBus.Error.UnknownMethod"
        | "org.freedesktop.DBus.Error.UnknownInterface"
        | "org.bluez.Error.DoesNotExist" => Fault::Device,
        "org.bluez.Error.InProgress" | "org.bluez.Error.AlreadyConnected" => Fault::InProgress,
        "org.bluez.Error.NotConnected" => Fault::NotConnected,
        "org.bluez.Error.Failed" if message.contains("already in progress") => Fault::InProgress,
        "org.bluez.Error.Failed" if message.eq_ignore_ascii_case("not connected") => {
            Fault::NotConnected
        }
        _ => Fault::Other,
    }
}

/// The error as an operator needs it: D-Bus name and message when there are both, on one
/// line (messages may carry newlines; a log record is one line).
pub fn describe(e: &btleplug::Error) -> String {
    let text = match dbus_error(e) {
        Some((name, message)) if !name.is_empty() => format!("{name}: {message}"),
        _ => e.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bluetoothd_gone_is_an_adapter_fault() {
        let name = "org.freedesktop.DBus.Error.ServiceUnknown";
        let message = "The name org.bluez was not provided by any .service files";
        assert_eq!(classify_dbus(name, message), Fault::Adapter);
        assert_eq!(
            classify_dbus("org.bluez.Error.NotReady", "Resource Not Ready"),
            Fault::Adapter
        );
        assert_eq!(
            classify(&btleplug::Error::NoAdapterAvailable),
            Fault::Adapter
        );
    }

    #[test]
    fn forgotten_objects_and_busy_calls() {
        assert_eq!(
            classify_dbus("org.freedesktop.DBus.Error.UnknownObject", "no such object"),
            Fault::Device
        );
        assert_eq!(classify(&btleplug::Error::DeviceNotFound), Fault::Device);
        assert_eq!(
            classify_dbus(
                "org.bluez.Error.InProgress",
                "Operation already in progress"
            ),
            Fault::InProgress
        );
        assert_eq!(
            classify_dbus("org.bluez.Error.Failed", "Operation already in progress"),
            Fault::InProgress
        );
        assert_eq!(
            classify_dbus("org.bluez.Error.Failed", "Not connected"),
            Fault::NotConnected
        );
    }

    #[test]
    fn a_plain_failure_is_other() {
        assert_eq!(
            classify_dbus("org.bluez.Error.Failed", "le-connection-abort-by-local"),
            Fault::Other
        );
        let e = btleplug::Error::TimedOut(std::time::Duration::from_secs(1));
        assert_eq!(classify(&e), Fault::Other);
        assert_eq!(describe(&e), e.to_string());
    }
}
