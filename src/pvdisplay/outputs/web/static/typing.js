// Text typed on a phone as the key presses of a US keyboard, `KeyboardEvent.code` names.

const PLAIN = {
  " ": "Space", "-": "Minus", "=": "Equal", "[": "BracketLeft", "]": "BracketRight",
  "\\": "Backslash", ";": "Semicolon", "'": "Quote", ",": "Comma", ".": "Period", "/": "Slash",
  "`": "Backquote", "\n": "Enter", "\t": "Tab",
};
const SHIFTED = {
  "!": "Digit1", "@": "Digit2", "#": "Digit3", "$": "Digit4", "%": "Digit5", "^": "Digit6",
  "&": "Digit7", "*": "Digit8", "(": "Digit9", ")": "Digit0", "_": "Minus", "+": "Equal",
  "{": "BracketLeft", "}": "BracketRight", "|": "Backslash", ":": "Semicolon", "\"": "Quote",
  "<": "Comma", ">": "Period", "?": "Slash", "~": "Backquote",
};

function press(code) {
  return [{ t: "key", code, down: true }, { t: "key", code, down: false }];
}

function shifted(code) {
  return [{ t: "key", code: "ShiftLeft", down: true }, ...press(code),
    { t: "key", code: "ShiftLeft", down: false }];
}

// The key events that type `char`; none for a character a US keyboard has no key for.
export function keysFor(char) {
  if (/^[a-z]$/.test(char)) return press(`Key${char.toUpperCase()}`);
  if (/^[A-Z]$/.test(char)) return shifted(`Key${char}`);
  if (/^[0-9]$/.test(char)) return press(`Digit${char}`);
  if (char in PLAIN) return press(PLAIN[char]);
  if (char in SHIFTED) return shifted(SHIFTED[char]);
  return [];
}
