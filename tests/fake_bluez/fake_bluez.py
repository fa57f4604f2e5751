#!/usr/bin/python3
"""A fake BlueZ (org.bluez) for tests: btleplug's real Linux path, no radio.

Run with /usr/bin/python3 (Debian's python3-dbus and python3-gi) on a private bus:

    DBUS_SYSTEM_BUS_ADDRESS=unix:path=DIR/bus /usr/bin/python3 tests/fake_bluez/fake_bluez.py

It owns `org.bluez` on the bus named by DBUS_SYSTEM_BUS_ADDRESS and serves what btleplug 0.13
(bluez-async 0.9) reads: an ObjectManager at `/`, the adapter `/org/bluez/hci0`, devices
`/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF` that appear (InterfacesAdded) once a discovery session
sees them, and, only while a device is connected, its GATT database:

    dev_XX/service0001          00001801 (Generic Attribute)
    dev_XX/service0001/char0002 00002a05 (Service Changed, indicate)
    dev_XX/service0001/char0002/desc0004   00002902 (CCC)
    dev_XX/service000a          the appliance's service
    dev_XX/service000a/char000b the command characteristic (write with response)
    dev_XX/service000a/char000d the result characteristic (read + notify, or read only)
    dev_XX/service000a/char000d/desc000f   00002902 (CCC, only with notify)

Scenario control: one JSON object per line on stdin, one JSON answer per line on stdout
(`{"ok": true, ...}` or `{"ok": false, "error": "..."}`), in order. The first stdout line is
`{"ready": true}`, written once org.bluez is owned and the adapter is exported. Ops are
documented in tests/fake_bluez/README.md and in `Fake.op_*` below. Closing stdin stops the fake.

Set FAKE_BLUEZ_DEBUG=1 to log every D-Bus call and signal to stderr.
"""

import json
import os
import random
import signal
import sys
import traceback

import dbus
import dbus.bus
import dbus.exceptions
import dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

BUS_NAME = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ADAPTER_ADDRESS = "00:1A:7D:DA:71:13"

OM_IFACE = "org.freedesktop.DBus.ObjectManager"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
INTROSPECT_IFACE = "org.freedesktop.DBus.Introspectable"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
DESC_IFACE = "org.bluez.GattDescriptor1"
AGENT_MANAGER_IFACE = "org.bluez.AgentManager1"

CCC_UUID = "00002902-0000-1000-8000-00805f9b34fb"
GATT_SERVICE_UUID = "00001801-0000-1000-8000-00805f9b34fb"
SERVICE_CHANGED_UUID = "00002a05-0000-1000-8000-00805f9b34fb"

DEFAULT_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
DEFAULT_COMMAND = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
DEFAULT_RESULT = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"

DISCOVERY_FILTERS = ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]

DEBUG = bool(os.environ.get("FAKE_BLUEZ_DEBUG"))


def log(*args):
    """Always printed: things a failing test's reader needs."""
    print("fake_bluez:", *args, file=sys.stderr, flush=True)


def debug(*args):
    if DEBUG:
        print("fake_bluez:", *args, file=sys.stderr, flush=True)


def bluez_error(name, message):
    return dbus.exceptions.DBusException(message, name="org.bluez.Error." + name)


def ay(data):
    return dbus.Array([dbus.Byte(b) for b in data], signature="y")


def as_(items):
    return dbus.Array([dbus.String(s) for s in items], signature="s")


def signature_of(value):
    """D-Bus signature of a value built with the dbus-python types used here."""
    if isinstance(value, dbus.Boolean):
        return "b"
    if isinstance(value, dbus.Byte):
        return "y"
    if isinstance(value, dbus.Int16):
        return "n"
    if isinstance(value, dbus.UInt16):
        return "q"
    if isinstance(value, dbus.Int32):
        return "i"
    if isinstance(value, dbus.UInt32):
        return "u"
    if isinstance(value, dbus.ObjectPath):
        return "o"
    if isinstance(value, dbus.String):
        return "s"
    if isinstance(value, dbus.Dictionary):
        return "a{%s}" % value.signature
    if isinstance(value, dbus.Array):
        return "a%s" % value.signature
    raise TypeError("untyped property value %r" % (value,))


def normalize_uuid(text):
    text = str(text).strip().lower()
    if len(text) == 4:  # 16-bit short form
        text = "0000%s-0000-1000-8000-00805f9b34fb" % text
    if len(text) != 36 or text.count("-") != 4:
        raise ValueError("bad UUID %r" % text)
    return text


def normalize_address(text):
    parts = str(text).strip().upper().split(":")
    if len(parts) != 6 or any(len(p) != 2 for p in parts):
        raise ValueError("bad address %r (want AA:BB:CC:DD:EE:FF)" % text)
    int("".join(parts), 16)
    return ":".join(parts)


def bytes_field(op, name):
    """`<name>_hex` (hex string) or `<name>_utf8` (text) from a control op; None if absent."""
    if op.get(name + "_hex") is not None:
        return bytes.fromhex(op[name + "_hex"])
    if op.get(name + "_utf8") is not None:
        return op[name + "_utf8"].encode("utf-8")
    return None


# ---------------------------------------------------------------------------------------------
# D-Bus objects
# ---------------------------------------------------------------------------------------------


class BluezObject(dbus.service.Object):
    """An exported object with Properties, full Introspect (properties, then child nodes)."""

    WRITABLE = {}  # iface -> set of property names writable with Properties.Set

    def __init__(self, fake, path):
        self.fake = fake
        self.path = path
        self.props = {}  # iface -> {name: typed value}
        dbus.service.Object.__init__(self, fake.conn, path)

    def interfaces(self):
        return dbus.Dictionary(
            {iface: dbus.Dictionary(dict(props), signature="sv") for iface, props in self.props.items()},
            signature="sa{sv}",
        )

    def update(self, iface, **changes):
        """Set properties; emit PropertiesChanged with those that changed."""
        props = self.props[iface]
        changed = {}
        for name, value in changes.items():
            if name not in props or props[name] != value or isinstance(value, dbus.Array):
                props[name] = value
                changed[name] = value
        if changed:
            self.emit_changed(iface, changed)

    def emit_changed(self, iface, changed):
        debug("signal PropertiesChanged %s %s %s" % (self.path, iface, _short(changed)))
        self.PropertiesChanged(iface, dbus.Dictionary(changed, signature="sv"), as_([]))

    def set_property(self, iface, name, value):
        raise dbus.exceptions.DBusException(
            "Property %s is read-only" % name, name="org.freedesktop.DBus.Error.PropertyReadOnly"
        )

    @dbus.service.method(PROPS_IFACE, in_signature="ss", out_signature="v")
    def Get(self, iface, name):
        debug("call %s Properties.Get(%s, %s)" % (self.path, iface, name))
        props = self.props.get(iface)
        if props is None:
            raise dbus.exceptions.DBusException(
                "No such interface '%s'" % iface, name="org.freedesktop.DBus.Error.InvalidArgs"
            )
        if name not in props:
            raise dbus.exceptions.DBusException(
                "No such property '%s'" % name, name="org.freedesktop.DBus.Error.InvalidArgs"
            )
        return props[name]

    @dbus.service.method(PROPS_IFACE, in_signature="s", out_signature="a{sv}")
    def GetAll(self, iface):
        debug("call %s Properties.GetAll(%s)" % (self.path, iface))
        props = self.props.get(iface)
        if props is None:
            raise dbus.exceptions.DBusException(
                "No such interface '%s'" % iface, name="org.freedesktop.DBus.Error.InvalidArgs"
            )
        return dbus.Dictionary(dict(props), signature="sv")

    @dbus.service.method(PROPS_IFACE, in_signature="ssv", out_signature="")
    def Set(self, iface, name, value):
        debug("call %s Properties.Set(%s, %s, %r)" % (self.path, iface, name, value))
        props = self.props.get(iface)
        if props is None or name not in props:
            raise dbus.exceptions.DBusException(
                "No such property '%s'" % name, name="org.freedesktop.DBus.Error.InvalidArgs"
            )
        if name not in self.WRITABLE.get(iface, ()):
            raise dbus.exceptions.DBusException(
                "Property %s is read-only" % name, name="org.freedesktop.DBus.Error.PropertyReadOnly"
            )
        self.set_property(iface, name, value)

    @dbus.service.signal(PROPS_IFACE, signature="sa{sv}as")
    def PropertiesChanged(self, iface, changed, invalidated):
        pass

    @dbus.service.method(
        INTROSPECT_IFACE,
        in_signature="",
        out_signature="s",
        path_keyword="object_path",
        connection_keyword="connection",
    )
    def Introspect(self, object_path, connection):
        """Like dbus-python's, plus <property> elements; child <node>s come after interfaces."""
        debug("call %s Introspect()" % object_path)
        xml = _INTROSPECT_HEADER
        xml += '<node name="%s">\n' % object_path
        table = self._dbus_class_table[self.__class__.__module__ + "." + self.__class__.__name__]
        ifaces = list(table.keys())
        for iface in self.props:
            if iface not in ifaces:
                ifaces.append(iface)
        for iface in ifaces:
            funcs = table.get(iface, {})
            xml += '  <interface name="%s">\n' % iface
            for func in funcs.values():
                if getattr(func, "_dbus_is_method", False):
                    xml += self.__class__._reflect_on_method(func)
                elif getattr(func, "_dbus_is_signal", False):
                    xml += self.__class__._reflect_on_signal(func)
            for name, value in self.props.get(iface, {}).items():
                access = "readwrite" if name in self.WRITABLE.get(iface, ()) else "read"
                xml += '    <property name="%s" type="%s" access="%s"/>\n' % (name, signature_of(value), access)
            xml += "  </interface>\n"
        for child in sorted(connection.list_exported_child_objects(object_path)):
            xml += '  <node name="%s"/>\n' % child
        xml += "</node>\n"
        return xml


_INTROSPECT_HEADER = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)


def _short(value):
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."


class Root(BluezObject):
    """`/`: the ObjectManager."""

    @dbus.service.method(OM_IFACE, in_signature="", out_signature="a{oa{sa{sv}}}")
    def GetManagedObjects(self):
        debug("call / GetManagedObjects()")
        result = dbus.Dictionary({}, signature="oa{sa{sv}}")
        for path, obj in self.fake.managed.items():
            result[dbus.ObjectPath(path)] = obj.interfaces()
        return result

    @dbus.service.signal(OM_IFACE, signature="oa{sa{sv}}")
    def InterfacesAdded(self, path, interfaces):
        pass

    @dbus.service.signal(OM_IFACE, signature="oas")
    def InterfacesRemoved(self, path, interfaces):
        pass


class BluezRoot(BluezObject):
    """`/org/bluez`: AgentManager1 that accepts everything (no pairing is simulated)."""

    def __init__(self, fake, path):
        BluezObject.__init__(self, fake, path)
        self.props[AGENT_MANAGER_IFACE] = {}

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="os", out_signature="")
    def RegisterAgent(self, agent, capability):
        debug("call RegisterAgent(%s, %s)" % (agent, capability))

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="o", out_signature="")
    def UnregisterAgent(self, agent):
        debug("call UnregisterAgent(%s)" % agent)

    @dbus.service.method(AGENT_MANAGER_IFACE, in_signature="o", out_signature="")
    def RequestDefaultAgent(self, agent):
        debug("call RequestDefaultAgent(%s)" % agent)


class Adapter(BluezObject):
    WRITABLE = {ADAPTER_IFACE: {"Powered", "Alias", "Discoverable", "Pairable", "DiscoverableTimeout", "PairableTimeout"}}

    def __init__(self, fake, path, powered):
        BluezObject.__init__(self, fake, path)
        self.props[ADAPTER_IFACE] = {
            "Address": dbus.String(ADAPTER_ADDRESS),
            "AddressType": dbus.String("public"),
            "Name": dbus.String("fake-bluez"),
            "Alias": dbus.String("fake-bluez"),
            "Class": dbus.UInt32(0),
            "Powered": dbus.Boolean(powered),
            "PowerState": dbus.String("on" if powered else "off"),
            "Discoverable": dbus.Boolean(False),
            "DiscoverableTimeout": dbus.UInt32(180),
            "Pairable": dbus.Boolean(False),
            "PairableTimeout": dbus.UInt32(0),
            "Discovering": dbus.Boolean(False),
            "UUIDs": as_([]),
            "Modalias": dbus.String("usb:v1D6Bp0246d0542"),
            "Roles": as_(["central", "peripheral"]),
        }

    def set_property(self, iface, name, value):
        if name == "Powered":
            self.fake.set_powered(bool(value))
        elif name == "Alias":
            self.update(iface, Alias=dbus.String(value or "fake-bluez"))
        elif name in ("Discoverable", "Pairable"):
            self.update(iface, **{name: dbus.Boolean(bool(value))})
        else:
            self.update(iface, **{name: dbus.UInt32(int(value))})

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender=None):
        debug("call StartDiscovery() from %s" % sender)
        self.fake.start_discovery(sender)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender=None):
        debug("call StopDiscovery() from %s" % sender)
        self.fake.stop_discovery(sender)

    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}", out_signature="", sender_keyword="sender")
    def SetDiscoveryFilter(self, properties, sender=None):
        debug("call SetDiscoveryFilter(%s) from %s" % (_short(dict(properties)), sender))
        self.fake.set_discovery_filter(sender, properties)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="as")
    def GetDiscoveryFilters(self):
        debug("call GetDiscoveryFilters()")
        return as_(DISCOVERY_FILTERS)

    @dbus.service.method(ADAPTER_IFACE, in_signature="o", out_signature="")
    def RemoveDevice(self, device):
        debug("call RemoveDevice(%s)" % device)
        self.fake.remove_device_object(str(device))


class Device(BluezObject):
    WRITABLE = {DEVICE_IFACE: {"Alias", "Trusted", "Blocked", "WakeAllowed"}}

    def __init__(self, fake, path, periph):
        BluezObject.__init__(self, fake, path)
        self.periph = periph
        self.props[DEVICE_IFACE] = {
            "Address": dbus.String(periph.address),
            "AddressType": dbus.String(periph.address_type),
            "Name": dbus.String(periph.name),
            "Alias": dbus.String(periph.name),
            "Paired": dbus.Boolean(False),
            "Bonded": dbus.Boolean(False),
            "Trusted": dbus.Boolean(False),
            "Blocked": dbus.Boolean(False),
            "LegacyPairing": dbus.Boolean(False),
            "RSSI": dbus.Int16(periph.rssi),
            "Connected": dbus.Boolean(False),
            "UUIDs": as_([periph.service]),
            "Adapter": dbus.ObjectPath(ADAPTER_PATH),
            "ServicesResolved": dbus.Boolean(False),
            "WakeAllowed": dbus.Boolean(False),
        }

    def set_property(self, iface, name, value):
        if name == "Alias":
            self.update(iface, Alias=dbus.String(value or self.periph.name))
        else:
            self.update(iface, **{name: dbus.Boolean(bool(value))})

    @dbus.service.method(
        DEVICE_IFACE, in_signature="", out_signature="", sender_keyword="sender", async_callbacks=("ok", "err")
    )
    def Connect(self, sender=None, ok=None, err=None):
        debug("call %s Connect() from %s" % (self.path, sender))
        self.fake.connect(self, ok, err)

    @dbus.service.method(
        DEVICE_IFACE, in_signature="", out_signature="", sender_keyword="sender", async_callbacks=("ok", "err")
    )
    def Disconnect(self, sender=None, ok=None, err=None):
        debug("call %s Disconnect() from %s" % (self.path, sender))
        self.fake.client_disconnect(self, ok, err)

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def ConnectProfile(self, uuid):
        debug("call %s ConnectProfile(%s)" % (self.path, uuid))
        raise bluez_error("NotSupported", "Operation is not supported")

    @dbus.service.method(DEVICE_IFACE, in_signature="s", out_signature="")
    def DisconnectProfile(self, uuid):
        debug("call %s DisconnectProfile(%s)" % (self.path, uuid))
        raise bluez_error("NotSupported", "Operation is not supported")

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def Pair(self):
        debug("call %s Pair()" % self.path)
        raise bluez_error("NotSupported", "Pairing is not simulated by the fake")

    @dbus.service.method(DEVICE_IFACE, in_signature="", out_signature="")
    def CancelPairing(self):
        debug("call %s CancelPairing()" % self.path)
        raise bluez_error("DoesNotExist", "Does Not Exist")


class GattService(BluezObject):
    def __init__(self, fake, path, device_path, uuid):
        BluezObject.__init__(self, fake, path)
        self.props[SERVICE_IFACE] = {
            "UUID": dbus.String(uuid),
            "Device": dbus.ObjectPath(device_path),
            "Primary": dbus.Boolean(True),
            "Includes": dbus.Array([], signature="o"),
        }


class GattCharacteristic(BluezObject):
    def __init__(self, fake, path, service_path, uuid, flags, device, role):
        BluezObject.__init__(self, fake, path)
        self.device = device  # the Device object
        self.role = role  # "command", "result" or "other"
        self.uuid = uuid
        self.flags = list(flags)
        self.notify_clients = set()
        self.props[CHAR_IFACE] = {
            "UUID": dbus.String(uuid),
            "Service": dbus.ObjectPath(service_path),
            "Value": ay(b""),
            "Notifying": dbus.Boolean(False),
            "Flags": as_(flags),
            "MTU": dbus.UInt16(device.periph.mtu),
        }

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="ay", sender_keyword="sender")
    def ReadValue(self, options, sender=None):
        debug("call %s ReadValue(%s) from %s" % (self.path, _short(dict(options)), sender))
        return self.fake.read_value(self, options)

    @dbus.service.method(
        CHAR_IFACE,
        in_signature="aya{sv}",
        out_signature="",
        sender_keyword="sender",
        async_callbacks=("ok", "err"),
    )
    def WriteValue(self, value, options, sender=None, ok=None, err=None):
        debug("call %s WriteValue(%s, %s) from %s" % (self.path, bytes(value).hex(), _short(dict(options)), sender))
        self.fake.write_value(self, bytes(value), options, ok, err)

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StartNotify(self, sender=None):
        debug("call %s StartNotify() from %s" % (self.path, sender))
        self.fake.start_notify(self, sender)

    @dbus.service.method(CHAR_IFACE, in_signature="", out_signature="", sender_keyword="sender")
    def StopNotify(self, sender=None):
        debug("call %s StopNotify() from %s" % (self.path, sender))
        self.fake.stop_notify(self, sender)

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="hq")
    def AcquireWrite(self, options):
        raise bluez_error("NotSupported", "Operation is not supported")

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="hq")
    def AcquireNotify(self, options):
        raise bluez_error("NotSupported", "Operation is not supported")


class GattDescriptor(BluezObject):
    def __init__(self, fake, path, char):
        BluezObject.__init__(self, fake, path)
        self.char = char
        self.props[DESC_IFACE] = {
            "UUID": dbus.String(CCC_UUID),
            "Characteristic": dbus.ObjectPath(char.path),
            "Value": ay(b""),
        }

    @dbus.service.method(DESC_IFACE, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options):
        debug("call %s ReadValue()" % self.path)
        value = b"\x01\x00" if self.char.notify_clients else b"\x00\x00"
        if "indicate" in self.char.flags and self.char.notify_clients:
            value = b"\x02\x00"
        self.update(DESC_IFACE, Value=ay(value))
        return ay(value)

    @dbus.service.method(DESC_IFACE, in_signature="aya{sv}", out_signature="")
    def WriteValue(self, value, options):
        debug("call %s WriteValue(%s)" % (self.path, bytes(value).hex()))
        # Like BlueZ: the CCC is managed through StartNotify/StopNotify only.
        raise bluez_error("NotPermitted", "Write not permitted")


# ---------------------------------------------------------------------------------------------
# The simulated world
# ---------------------------------------------------------------------------------------------


class Peripheral:
    """An appliance on the air. It has a D-Bus Device only once discovered."""

    def __init__(self, op):
        self.address = normalize_address(op["address"])
        self.name = op.get("name") or ("fake-" + self.address.replace(":", "")[-4:])
        self.address_type = op.get("address_type", "public")
        if self.address_type not in ("public", "random"):
            raise ValueError("address_type must be public or random")
        self.service = normalize_uuid(op.get("service", DEFAULT_SERVICE))
        self.command_char = normalize_uuid(op.get("command_char", DEFAULT_COMMAND))
        self.result_char = normalize_uuid(op.get("result_char", DEFAULT_RESULT))
        self.rssi = int(op.get("rssi", -60))
        self.mtu = int(op.get("mtu", 517))
        self.in_range = True
        # behaviour
        self.mode = "echo"
        self.reply = b""
        self.delay_ms = 0
        self.ack_delay_ms = 0
        self.drop_on_write = False
        self.read_value = None
        self.write_error = None
        self.connect_delay_ms = None
        self.fail_connect = 0
        self.fail_connect_error = ("Failed", "le-connection-abort-by-local")
        self.command_flags = ["write"]
        self.result_value = b""  # what the peripheral returns on a read
        self.set_behaviour(op)

    def set_behaviour(self, op):
        if "mode" in op:
            if op["mode"] not in ("echo", "reply", "silent"):
                raise ValueError("mode must be echo, reply or silent")
            self.mode = op["mode"]
        reply = bytes_field(op, "reply")
        if reply is not None:
            self.reply = reply
        if "delay_ms" in op:
            self.delay_ms = int(op["delay_ms"])
        if "ack_delay_ms" in op:
            self.ack_delay_ms = int(op["ack_delay_ms"])
        if "drop_on_write" in op:
            self.drop_on_write = bool(op["drop_on_write"])
        if "write_error" in op:
            self.write_error = op["write_error"]
        if "connect_delay_ms" in op:
            self.connect_delay_ms = None if op["connect_delay_ms"] is None else int(op["connect_delay_ms"])
        if "command_flags" in op:
            self.command_flags = [str(f) for f in op["command_flags"]]
        if "read_value" in op and op["read_value"] is None:
            self.read_value = None
        read_value = bytes_field(op, "read_value")
        if read_value is not None:
            self.read_value = read_value
            self.result_value = read_value

    def behaviour(self):
        return {
            "mode": self.mode,
            "reply_hex": self.reply.hex(),
            "delay_ms": self.delay_ms,
            "ack_delay_ms": self.ack_delay_ms,
            "drop_on_write": self.drop_on_write,
            "read_value_hex": None if self.read_value is None else self.read_value.hex(),
            "write_error": self.write_error,
            "connect_delay_ms": self.connect_delay_ms,
            "command_flags": self.command_flags,
        }

    @property
    def path(self):
        return ADAPTER_PATH + "/dev_" + self.address.replace(":", "_")


class Fake:
    def __init__(self, address):
        self.address = address
        self.loop = GLib.MainLoop()
        self.conn = None
        self.root = None
        self.bluez_root = None
        self.adapter = None
        self.managed = {}  # path -> BluezObject, for GetManagedObjects (adapter, devices, GATT)
        self.peripherals = {}  # address -> Peripheral
        self.devices = {}  # address -> Device (exported)
        self.link = {}  # address -> {"gen": int, "gatt": [objects], "chars": {uuid: char}}
        self.connecting = {}  # address -> {"timer": id, "ok":, "err":}
        self.discovery_clients = set()
        self.discovery_filters = {}  # sender -> list of uuids (empty: all)
        self.name_watches = {}  # sender -> match
        self.adv_timer = None
        self.adv_interval_ms = 1000
        self.stalls = False
        self.stall_clears_on_restart = True
        self.fail_connect_any = 0
        self.fail_connect_any_error = ("Failed", "le-connection-abort-by-local")
        self.connect_delay_ms = 0
        self.link_limit = None
        self.closing_conn = False
        self.reset_stats()
        # control channel
        self.in_buf = b""
        self.queue = []
        self.busy = False

    # ----- stats -----

    def reset_stats(self):
        self.max_connected = len(self.link) if hasattr(self, "link") else 0
        self.connects = {}
        self.connect_attempts = {}
        self.writes = []
        self.reads = 0
        self.notifications = 0
        self.start_discovery_calls = 0
        self.restarts = 0

    def connected_addresses(self):
        return sorted(self.link.keys())

    # ----- bus connection and export -----

    def bring_up(self, powered):
        self.conn = dbus.bus.BusConnection(self.address)
        self.conn.set_exit_on_disconnect(False)
        self.conn.call_on_disconnection(self.on_bus_lost)
        self.closing_conn = False
        self.root = Root(self, "/")
        self.bluez_root = BluezRoot(self, "/org/bluez")
        reply = self.conn.request_name(BUS_NAME, dbus.bus.NAME_FLAG_DO_NOT_QUEUE)
        if reply != dbus.bus.REQUEST_NAME_REPLY_PRIMARY_OWNER:
            raise RuntimeError("could not own %s (reply %s)" % (BUS_NAME, reply))
        self.adapter = Adapter(self, ADAPTER_PATH, powered)
        self.add_managed(self.adapter)
        debug("up on %s as %s" % (self.address, self.conn.get_unique_name()))

    def on_bus_lost(self, conn):
        if conn is self.conn and not self.closing_conn:
            log("lost the bus connection; exiting")
            self.loop.quit()

    def add_managed(self, obj):
        self.managed[obj.path] = obj
        debug("signal InterfacesAdded %s %s" % (obj.path, list(obj.props.keys())))
        self.root.InterfacesAdded(dbus.ObjectPath(obj.path), obj.interfaces())

    def remove_managed(self, obj, emit=True):
        self.managed.pop(obj.path, None)
        if emit:
            debug("signal InterfacesRemoved %s" % obj.path)
            self.root.InterfacesRemoved(dbus.ObjectPath(obj.path), as_(list(obj.props.keys())))
        obj.remove_from_connection()

    def watch_client(self, sender):
        if sender in self.name_watches or not sender:
            return

        def changed(owner, sender=sender):
            if owner == "":
                self.client_gone(sender)

        self.name_watches[sender] = self.conn.watch_name_owner(sender, changed)

    def client_gone(self, sender):
        debug("client %s left the bus" % sender)
        match = self.name_watches.pop(sender, None)
        if match is not None:
            match.cancel()
        if sender in self.discovery_clients:
            self.discovery_clients.discard(sender)
            self.discovery_filters.pop(sender, None)
            self.discovery_changed()
        self.discovery_filters.pop(sender, None)
        for link in self.link.values():
            for char in link["chars"].values():
                if sender in char.notify_clients:
                    char.notify_clients.discard(sender)
                    if not char.notify_clients:
                        char.update(CHAR_IFACE, Notifying=dbus.Boolean(False))

    # ----- adapter -----

    def powered(self):
        return bool(self.adapter.props[ADAPTER_IFACE]["Powered"])

    def set_powered(self, on):
        if on == self.powered():
            return
        if not on:
            for address in list(self.link):
                self.drop_link(address, "adapter powered off")
            for address in list(self.connecting):
                self.fail_pending_connect(address, "Failed", "le-connection-abort-by-local")
            self.discovery_clients.clear()
            self.discovery_changed()
        self.adapter.update(ADAPTER_IFACE, Powered=dbus.Boolean(on), PowerState=dbus.String("on" if on else "off"))

    def set_discovery_filter(self, sender, properties):
        uuids = []
        for key, value in properties.items():
            if key not in DISCOVERY_FILTERS:
                raise bluez_error("InvalidArguments", "Invalid arguments in method call")
            if key == "UUIDs":
                uuids = [normalize_uuid(u) for u in value]
            if key == "Transport" and str(value) not in ("auto", "bredr", "le"):
                raise bluez_error("InvalidArguments", "Invalid arguments in method call")
        self.discovery_filters[sender] = uuids
        self.watch_client(sender)

    def start_discovery(self, sender):
        if not self.powered():
            raise bluez_error("NotReady", "Resource Not Ready")
        if sender in self.discovery_clients:
            # BlueZ: every client can start one discovery only.
            raise bluez_error("InProgress", "Operation already in progress")
        self.start_discovery_calls += 1
        self.discovery_clients.add(sender)
        self.watch_client(sender)
        self.discovery_changed()
        GLib.idle_add(self.advertise_once)

    def stop_discovery(self, sender):
        if sender not in self.discovery_clients:
            raise bluez_error("Failed", "No discovery started")
        self.discovery_clients.discard(sender)
        self.discovery_filters.pop(sender, None)
        self.discovery_changed()

    def discovering(self):
        return bool(self.discovery_clients)

    def discovery_changed(self):
        on = self.discovering()
        if self.adapter is not None:
            self.adapter.update(ADAPTER_IFACE, Discovering=dbus.Boolean(on))
        if on and self.adv_timer is None:
            self.adv_timer = GLib.timeout_add(self.adv_interval_ms, self.advertise_tick)
        elif not on and self.adv_timer is not None:
            GLib.source_remove(self.adv_timer)
            self.adv_timer = None

    def filter_matches(self, periph):
        filters = [self.discovery_filters.get(s, []) for s in self.discovery_clients]
        if not filters or any(not f for f in filters):
            return True
        return any(periph.service in f for f in filters)

    def advertise_tick(self):
        self.advertise_once()
        return True

    def advertise_once(self):
        """One advertising interval: discovering, not stalled -> devices seen."""
        if not self.discovering() or self.stalls or self.adapter is None:
            return False
        for address, periph in list(self.peripherals.items()):
            if not periph.in_range or address in self.link or not self.filter_matches(periph):
                continue
            dev = self.devices.get(address)
            if dev is None:
                self.export_device(periph)
            else:
                rssi = periph.rssi + random.randint(-3, 3)
                dev.update(DEVICE_IFACE, RSSI=dbus.Int16(rssi))
        return False

    def export_device(self, periph):
        dev = Device(self, periph.path, periph)
        self.devices[periph.address] = dev
        self.add_managed(dev)
        return dev

    def remove_device_object(self, path):
        for address, dev in list(self.devices.items()):
            if dev.path == path:
                self.drop_link(address, "device removed")
                if address in self.connecting:
                    self.fail_pending_connect(address, "Failed", "le-connection-abort-by-local")
                del self.devices[address]
                self.remove_managed(dev)
                return
        raise bluez_error("DoesNotExist", "Does Not Exist")

    # ----- links -----

    def connect(self, dev, ok, err):
        periph = dev.periph
        address = periph.address
        self.connect_attempts[address] = self.connect_attempts.get(address, 0) + 1
        if not self.powered():
            err(bluez_error("NotReady", "Resource Not Ready"))
            return
        if address in self.link:
            ok()
            return
        if address in self.connecting:
            # BlueZ: device_connect_le() returns -EALREADY -> Failed(strerror(EALREADY)).
            err(bluez_error("Failed", "Operation already in progress"))
            return
        failure = None
        if periph.fail_connect > 0:
            periph.fail_connect -= 1
            failure = periph.fail_connect_error
        elif self.fail_connect_any > 0:
            self.fail_connect_any -= 1
            failure = self.fail_connect_any_error
        elif not periph.in_range:
            failure = ("Failed", "le-connection-abort-by-local")
        elif self.link_limit is not None and len(self.link) + len(self.connecting) >= self.link_limit:
            failure = ("Failed", "le-connection-abort-by-local")
        delay = periph.connect_delay_ms if periph.connect_delay_ms is not None else self.connect_delay_ms

        def done():
            pending = self.connecting.pop(address, None)
            if pending is None:
                return False
            if failure is not None:
                debug("%s Connect fails: %s %s" % (address, failure[0], failure[1]))
                err(bluez_error(*failure))
                return False
            self.establish_link(dev)
            ok()
            # Service discovery ends after the Connect reply, as with a device BlueZ has not cached.
            GLib.idle_add(self.resolve_services, address, self.link[address]["gen"])
            return False

        self.connecting[address] = {"timer": None, "ok": ok, "err": err}
        self.connecting[address]["timer"] = GLib.timeout_add(max(0, delay), done)

    def fail_pending_connect(self, address, name, message):
        pending = self.connecting.pop(address, None)
        if pending is not None:
            GLib.source_remove(pending["timer"])
            pending["err"](bluez_error(name, message))

    def establish_link(self, dev):
        periph = dev.periph
        address = periph.address
        self.gen_counter = getattr(self, "gen_counter", 0) + 1
        link = {"gen": self.gen_counter, "gatt": [], "chars": {}}
        self.link[address] = link
        self.connects[address] = self.connects.get(address, 0) + 1
        self.max_connected = max(self.max_connected, len(self.link))
        dev.update(DEVICE_IFACE, Connected=dbus.Boolean(True))
        # The GATT database, exported before ServicesResolved=true.
        base = dev.path
        gatt = []
        s1 = GattService(self, base + "/service0001", base, GATT_SERVICE_UUID)
        c1 = GattCharacteristic(self, s1.path + "/char0002", s1.path, SERVICE_CHANGED_UUID, ["indicate"], dev, "other")
        d1 = GattDescriptor(self, c1.path + "/desc0004", c1)
        s2 = GattService(self, base + "/service000a", base, periph.service)
        cmd = GattCharacteristic(self, s2.path + "/char000b", s2.path, periph.command_char, periph.command_flags, dev, "command")
        result_flags = ["read"] if periph.read_value is not None else ["read", "notify"]
        res = GattCharacteristic(self, s2.path + "/char000d", s2.path, periph.result_char, result_flags, dev, "result")
        gatt = [s1, c1, d1, s2, cmd, res]
        if "notify" in result_flags:
            gatt.append(GattDescriptor(self, res.path + "/desc000f", res))
        link["gatt"] = gatt
        link["chars"] = {c1.uuid: c1, cmd.uuid: cmd, res.uuid: res}
        link["result"] = res
        for obj in gatt:
            self.add_managed(obj)

    def resolve_services(self, address, gen):
        link = self.link.get(address)
        dev = self.devices.get(address)
        if link is not None and link["gen"] == gen and dev is not None:
            dev.update(DEVICE_IFACE, ServicesResolved=dbus.Boolean(True))
        return False

    def drop_link(self, address, why, emit=True):
        """The link is gone (either side). Returns whether there was one."""
        link = self.link.pop(address, None)
        if link is None:
            return False
        debug("%s link dropped: %s" % (address, why))
        dev = self.devices.get(address)
        if emit and dev is not None:
            dev.update(DEVICE_IFACE, ServicesResolved=dbus.Boolean(False))
            dev.update(DEVICE_IFACE, Connected=dbus.Boolean(False))
        for obj in reversed(link["gatt"]):
            self.remove_managed(obj, emit=emit)
        return True

    def client_disconnect(self, dev, ok, err):
        address = dev.periph.address
        if address in self.connecting:
            self.fail_pending_connect(address, "Failed", "le-connection-abort-by-local")
        self.drop_link(address, "Disconnect() by client")
        ok()

    # ----- GATT -----

    def current_link(self, char):
        address = char.device.periph.address
        link = self.link.get(address)
        if link is None or char not in link["gatt"]:
            raise bluez_error("Failed", "Not connected")
        return link

    def read_value(self, char, options):
        self.current_link(char)
        if "read" not in char.flags:
            raise bluez_error("NotPermitted", "Read not permitted")
        periph = char.device.periph
        if char.role == "result":
            value = periph.result_value
        else:
            value = bytes(char.props[CHAR_IFACE]["Value"])
        offset = int(options.get("offset", 0))
        self.reads += 1
        # BlueZ writes every read into its cache and emits PropertiesChanged(Value), so a read
        # shows up in btleplug's notifications() stream too.
        char.update(CHAR_IFACE, Value=ay(value))
        return ay(value[offset:])

    def write_value(self, char, value, options, ok, err):
        try:
            link = self.current_link(char)
        except dbus.exceptions.DBusException as e:
            err(e)
            return
        wtype = str(options.get("type", "request"))
        if wtype == "command":
            if "write-without-response" not in char.flags:
                err(bluez_error("NotSupported", "Operation is not supported"))
                return
        elif "write" not in char.flags:
            err(bluez_error("NotPermitted", "Write not permitted"))
            return
        periph = char.device.periph
        address = periph.address
        self.writes.append({"address": address, "char": char.uuid, "hex": value.hex(), "type": wtype})
        if periph.write_error:
            err(dbus.exceptions.DBusException("Operation failed with ATT error: 0x0e", name=periph.write_error))
            return
        gen = link["gen"]

        def acked():
            if self.link.get(address, {}).get("gen") != gen:
                if wtype != "command":
                    err(bluez_error("Failed", "Not connected"))
                return False
            if wtype != "command":
                ok()
            if char.role != "command":
                return False
            if periph.drop_on_write:
                GLib.idle_add(lambda: self.drop_link_if(address, gen, "drop_on_write") and False)
                return False
            if periph.mode == "silent":
                return False
            answer = value if periph.mode == "echo" else periph.reply
            GLib.timeout_add(max(0, periph.delay_ms), lambda: self.respond(address, gen, answer) and False)
            return False

        if wtype == "command":
            ok()  # no response on the air: the call returns once queued
        if periph.ack_delay_ms > 0:
            GLib.timeout_add(periph.ack_delay_ms, acked)
        else:
            acked()

    def drop_link_if(self, address, gen, why):
        if self.link.get(address, {}).get("gen") == gen:
            self.drop_link(address, why)
        return False

    def respond(self, address, gen, answer):
        link = self.link.get(address)
        if link is None or link["gen"] != gen:
            return False
        periph = self.peripherals.get(address)
        if periph is None:
            return False
        periph.result_value = answer
        self.notify(link["result"], answer)
        return False

    def notify(self, char, value):
        """The peripheral sends a notification; BlueZ passes it on only if notifying."""
        if not char.notify_clients:
            debug("%s notification dropped (not notifying): %s" % (char.path, value.hex()))
            return False
        self.notifications += 1
        char.update(CHAR_IFACE, Value=ay(value))
        return True

    def start_notify(self, char, sender):
        self.current_link(char)
        if "notify" not in char.flags and "indicate" not in char.flags:
            raise bluez_error("NotSupported", "Operation is not supported")
        if sender in char.notify_clients:
            return
        char.notify_clients.add(sender)
        self.watch_client(sender)
        char.update(CHAR_IFACE, Notifying=dbus.Boolean(True))

    def stop_notify(self, char, sender):
        self.current_link(char)
        if sender not in char.notify_clients:
            raise bluez_error("Failed", "No notify session started")
        char.notify_clients.discard(sender)
        if not char.notify_clients:
            char.update(CHAR_IFACE, Notifying=dbus.Boolean(False))

    # ----- restart -----

    def go_down(self, crash):
        """bluetoothd stops: graceful (power off, InterfacesRemoved, name released) or crash."""
        emit = not crash
        if self.adv_timer is not None:
            GLib.source_remove(self.adv_timer)
            self.adv_timer = None
        for address in list(self.connecting):
            self.fail_pending_connect(address, "Failed", "le-connection-abort-by-local")
        if emit:
            # Shutdown powers the controller off: links drop, discovery ends.
            for address in list(self.link):
                self.drop_link(address, "bluetoothd stopping")
            self.discovery_clients.clear()
            self.adapter.update(ADAPTER_IFACE, Discovering=dbus.Boolean(False))
            self.adapter.update(ADAPTER_IFACE, Powered=dbus.Boolean(False), PowerState=dbus.String("off"))
        else:
            for address in list(self.link):
                self.drop_link(address, "bluetoothd crashed", emit=False)
            self.discovery_clients.clear()
        for address, dev in list(self.devices.items()):
            self.remove_managed(dev, emit=emit)
        self.devices.clear()
        self.remove_managed(self.adapter, emit=emit)
        self.adapter = None
        for match in self.name_watches.values():
            match.cancel()
        self.name_watches.clear()
        self.discovery_filters.clear()
        self.root.remove_from_connection()
        self.bluez_root.remove_from_connection()
        self.closing_conn = True
        self.conn.flush()
        if emit:
            self.conn.release_name(BUS_NAME)
        self.conn.close()
        self.conn = None

    def come_back(self, crash):
        """bluetoothd starts again and owns the name. After a graceful stop the controller was
        powered off, so hci0 is exported unpowered and then powered on (PropertiesChanged:
        btleplug's StateUpdate(PoweredOn)). After a crash the kernel kept the controller
        powered: hci0 comes back powered and nothing changes, so no event at all."""
        if crash:
            self.bring_up(powered=True)
        else:
            self.bring_up(powered=False)
            self.adapter.update(ADAPTER_IFACE, Powered=dbus.Boolean(True), PowerState=dbus.String("on"))

    # ----- control channel -----

    def on_stdin(self, fd, condition):
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            # The test process is gone (or dropped the harness): stop, and take the private
            # bus down with us if the harness told us its PID (it started that dbus-daemon).
            debug("stdin closed; exiting")
            bus_pid = os.environ.get("FAKE_BLUEZ_BUS_PID")
            if bus_pid:
                try:
                    os.kill(int(bus_pid), signal.SIGTERM)
                except (OSError, ValueError):
                    pass
            self.loop.quit()
            return False
        self.in_buf += chunk
        while b"\n" in self.in_buf:
            line, self.in_buf = self.in_buf.split(b"\n", 1)
            if line.strip():
                self.queue.append(line)
        self.pump()
        return True

    def pump(self):
        while self.queue and not self.busy:
            line = self.queue.pop(0)
            self.busy = True
            try:
                op = json.loads(line)
                name = op.get("op")
                handler = getattr(self, "op_" + str(name), None)
                if handler is None:
                    raise ValueError("unknown op %r" % name)
                debug("control %s" % line.decode("utf-8", "replace"))
                answer = handler(op)
            except Exception as e:  # noqa: BLE001 - every failure goes back to the test
                if not isinstance(e, (ValueError, KeyError)):
                    log("control op failed: %s" % traceback.format_exc())
                answer = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            if answer is not None:
                self.answer(answer)

    def answer(self, obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
        self.busy = False
        GLib.idle_add(lambda: self.pump() and False)

    def periph(self, op):
        address = normalize_address(op["address"])
        periph = self.peripherals.get(address)
        if periph is None:
            raise ValueError("no device %s" % address)
        return periph

    # Every op_* returns the answer, or None and calls self.answer() later.

    def op_ping(self, op):
        return {"ok": True}

    def op_add_device(self, op):
        periph = Peripheral(op)
        if periph.address in self.peripherals:
            raise ValueError("device %s exists" % periph.address)
        self.peripherals[periph.address] = periph
        if self.discovering():
            GLib.idle_add(self.advertise_once)
        return {"ok": True, "path": periph.path}

    def op_remove_device(self, op):
        periph = self.periph(op)
        if op.get("keep_object"):
            # Out of range: the D-Bus object stays (BlueZ's cache), connects fail.
            periph.in_range = False
            self.drop_link(periph.address, "device went out of range")
            return {"ok": True}
        del self.peripherals[periph.address]
        self.drop_link(periph.address, "device removed")
        if periph.address in self.connecting:
            self.fail_pending_connect(periph.address, "Failed", "le-connection-abort-by-local")
        dev = self.devices.pop(periph.address, None)
        if dev is not None:
            self.remove_managed(dev)
        return {"ok": True}

    def op_set_behaviour(self, op):
        periph = self.periph(op)
        periph.set_behaviour(op)
        if "in_range" in op:
            periph.in_range = bool(op["in_range"])
        return {"ok": True, "behaviour": periph.behaviour()}

    def op_fail_connect(self, op):
        count = int(op.get("count", 1))
        error = (op.get("error", "Failed").replace("org.bluez.Error.", ""), op.get("message", "le-connection-abort-by-local"))
        if op.get("address"):
            periph = self.periph(op)
            periph.fail_connect = count
            periph.fail_connect_error = error
        else:
            self.fail_connect_any = count
            self.fail_connect_any_error = error
        return {"ok": True}

    def op_connect_delay_ms(self, op):
        ms = int(op["ms"])
        if op.get("address"):
            self.periph(op).connect_delay_ms = ms
        else:
            self.connect_delay_ms = ms
        return {"ok": True}

    def op_link_limit(self, op):
        limit = op.get("limit")
        self.link_limit = None if limit is None else int(limit)
        return {"ok": True}

    def op_adv_interval_ms(self, op):
        self.adv_interval_ms = max(10, int(op["ms"]))
        if self.adv_timer is not None:
            GLib.source_remove(self.adv_timer)
            self.adv_timer = GLib.timeout_add(self.adv_interval_ms, self.advertise_tick)
        return {"ok": True}

    def op_disconnect(self, op):
        periph = self.periph(op)
        was = self.drop_link(periph.address, "peripheral went away (control)")
        return {"ok": True, "was_connected": was}

    def op_notify(self, op):
        periph = self.periph(op)
        link = self.link.get(periph.address)
        if link is None:
            raise ValueError("%s is not connected" % periph.address)
        uuid = normalize_uuid(op.get("char", periph.result_char))
        char = link["chars"].get(uuid)
        if char is None:
            raise ValueError("no characteristic %s" % uuid)
        value = bytes_field(op, "value")
        if value is None:
            raise ValueError("notify needs value_hex or value_utf8")
        if char.role == "result":
            periph.result_value = value
        return {"ok": True, "delivered": self.notify(char, value)}

    def op_discovery_stalls(self, op):
        self.stalls = bool(op["stalls"])
        self.stall_clears_on_restart = bool(op.get("clears_on_restart", True))
        if not self.stalls and self.discovering():
            GLib.idle_add(self.advertise_once)
        return {"ok": True}

    def op_set_powered(self, op):
        if self.adapter is None:
            raise ValueError("bluetoothd is down (restart in progress)")
        self.set_powered(bool(op["powered"]))
        return {"ok": True}

    def op_restart(self, op):
        down_ms = int(op.get("down_ms", 0))
        crash = bool(op.get("crash", False))
        answer_when = op.get("answer", "up")
        if answer_when not in ("up", "down"):
            raise ValueError("answer must be up or down")
        if self.adapter is None:
            raise ValueError("already restarting")
        self.go_down(crash)
        self.restarts += 1
        if self.stall_clears_on_restart:
            self.stalls = False

        def up():
            try:
                self.come_back(crash)
                if answer_when == "up":
                    self.answer({"ok": True})
            except Exception as e:  # noqa: BLE001
                log("restart failed: %s" % traceback.format_exc())
                if answer_when == "up":
                    self.answer({"ok": False, "error": str(e)})
                else:
                    self.loop.quit()
            return False

        GLib.timeout_add(max(0, down_ms), up)
        if answer_when == "down":
            return {"ok": True}
        return None

    def stats(self):
        return {
            "ok": True,
            "connected": self.connected_addresses(),
            "max_connected": self.max_connected,
            "connects": dict(self.connects),
            "connect_attempts": dict(self.connect_attempts),
            "writes": list(self.writes),
            "reads": self.reads,
            "notifications": self.notifications,
            "discovering": self.discovering(),
            "start_discovery_calls": self.start_discovery_calls,
            "exported": sorted(self.devices.keys()),
            "restarts": self.restarts,
        }

    def op_bus_stats(self, op):
        """dbus-daemon's own accounting of every other connection (org.freedesktop.DBus.Debug.Stats):
        how many clients are connected and how many match rules each holds. A client that leaks
        match rules (or connections) shows here long before it hits the bus limits."""
        if self.conn is None:
            raise ValueError("bluetoothd is down (restart in progress)")
        dbus_obj = self.conn.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus")
        names = dbus_obj.ListNames(dbus_interface="org.freedesktop.DBus")
        me = self.conn.get_unique_name()
        clients = {}
        for name in names:
            name = str(name)
            if not name.startswith(":") or name == me:
                continue
            try:
                st = dbus_obj.GetConnectionStats(name, dbus_interface="org.freedesktop.DBus.Debug.Stats")
            except dbus.exceptions.DBusException:
                continue  # gone meanwhile
            clients[name] = {
                "match_rules": int(st.get("MatchRules", 0)),
                "peak_match_rules": int(st.get("PeakMatchRules", 0)),
            }
        total = dbus_obj.GetStats(dbus_interface="org.freedesktop.DBus.Debug.Stats")
        return {
            "ok": True,
            "clients": clients,
            "connections": int(total.get("ActiveConnections", 0)),
            "match_rules": int(total.get("MatchRules", 0)),
        }

    def op_stats(self, op):
        return self.stats()

    def op_reset_stats(self, op):
        self.reset_stats()
        return {"ok": True}

    def op_state(self, op):
        devices = {}
        for address, periph in self.peripherals.items():
            link = self.link.get(address)
            devices[address] = {
                "exported": address in self.devices,
                "connected": link is not None,
                "connecting": address in self.connecting,
                "in_range": periph.in_range,
                "notifying": sorted(c.uuid for c in link["chars"].values() if c.notify_clients) if link else [],
                "behaviour": periph.behaviour(),
            }
        return {
            "ok": True,
            "powered": self.adapter is not None and self.powered(),
            "discovering": self.discovering(),
            "discovery_clients": sorted(self.discovery_clients),
            "stalls": self.stalls,
            "link_limit": self.link_limit,
            "devices": devices,
        }

    def condition(self, op):
        what = op["until"]
        if what == "up":
            return self.adapter is not None
        if what == "discovering":
            return self.discovering()
        if what == "not_discovering":
            return not self.discovering()
        if what == "writes":
            address = op.get("address")
            n = len([w for w in self.writes if address is None or w["address"] == normalize_address(address)])
            return n >= int(op.get("count", 1))
        periph = self.periph(op)
        if what == "connected":
            return periph.address in self.link
        if what == "disconnected":
            return periph.address not in self.link
        if what == "exported":
            return periph.address in self.devices
        if what == "notifying":
            link = self.link.get(periph.address)
            if link is None:
                return False
            char = link["chars"].get(normalize_uuid(op.get("char", periph.result_char)))
            return bool(char and char.notify_clients)
        if what == "connects":
            return self.connects.get(periph.address, 0) >= int(op.get("count", 1))
        raise ValueError("unknown condition %r" % what)

    def op_wait(self, op):
        """Answer once a condition holds (checked every 10 ms), or fail after timeout_ms."""
        timeout_ms = int(op.get("timeout_ms", 10000))
        if self.condition(op):
            return {"ok": True}
        deadline = GLib.get_monotonic_time() + timeout_ms * 1000

        def check():
            try:
                if self.condition(op):
                    self.answer({"ok": True})
                    return False
            except Exception as e:  # noqa: BLE001
                self.answer({"ok": False, "error": str(e)})
                return False
            if GLib.get_monotonic_time() >= deadline:
                self.answer({"ok": False, "error": "timeout after %d ms waiting for %s" % (timeout_ms, json.dumps(op))})
                return False
            return True

        GLib.timeout_add(10, check)
        return None

    # ----- main -----

    def run(self):
        self.bring_up(powered=True)
        GLib.io_add_watch(
            sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, self.on_stdin
        )
        sys.stdout.write(json.dumps({"ready": True}) + "\n")
        sys.stdout.flush()
        self.loop.run()


def main():
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if not address:
        log("DBUS_SYSTEM_BUS_ADDRESS is not set")
        return 2
    DBusGMainLoop(set_as_default=True)
    Fake(address).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
